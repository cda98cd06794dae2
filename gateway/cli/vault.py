"""``compose-agent vault store|fetch``: the operator's way to put agent tokens into Vault and read them back.

Vault is found through ``VAULT_ADDRESS``, ``VAULT_TOKEN`` and ``VAULT_AGENT_PATH_PREFIX``; the
deployment hash and key default to ``DEPLOYMENT_HASH`` and ``VAULT_TOKEN_KEY``. A token given as
``--token -`` is read from stdin so that it never shows in shell history or ``ps``.
"""

from __future__ import annotations

import argparse
import secrets
import sys
from collections.abc import Mapping
from typing import Protocol, TextIO

import anyio

from ..auth.vault import TOKEN_KEYS, VaultClient, check_token_value
from ..errors import ConfigError, GatewayError

__all__ = ["add_vault_parser", "run_vault_command"]


class Subcommands(Protocol):
    """What ``ArgumentParser.add_subparsers()`` returns, as far as this module uses it.

    argparse's own name for that type is private (``_SubParsersAction``).
    """

    def add_parser(
        self, name: str, *, help: str | None = ..., description: str | None = ...
    ) -> argparse.ArgumentParser:
        """Add the sub-command ``name`` and return its parser."""
        ...


def add_vault_parser(subparsers: Subcommands) -> None:
    """Add ``vault store`` and ``vault fetch`` to the ``compose-agent`` command line."""
    vault = subparsers.add_parser(
        "vault",
        help="store or fetch agent tokens in Vault (KV v2)",
        description="Store or fetch the agent tokens at secret/{VAULT_AGENT_PATH_PREFIX}/{hash}/{key} (field 'token'). "
        "Vault is found through VAULT_ADDRESS and VAULT_TOKEN.",
    )
    commands = vault.add_subparsers(dest="vault_command", required=True, metavar="{store,fetch}")

    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--deployment-hash", metavar="H", help="the deployment's folder in Vault (default: $DEPLOYMENT_HASH)"
        )
        parser.add_argument("--key", metavar="K", help=f"one of {', '.join(TOKEN_KEYS)} (default: $VAULT_TOKEN_KEY)")

    store = commands.add_parser("store", help="write a token (a new version of the secret)")
    common(store)
    given = store.add_mutually_exclusive_group(required=True)
    given.add_argument("--token", metavar="T", help="the token; '-' reads it from stdin (keeps it out of history)")
    given.add_argument("--generate", action="store_true", help="generate a random token and print it once")

    fetch = commands.add_parser("fetch", help="print the token to stdout, and nothing else")
    common(fetch)


def run_vault_command(
    args: argparse.Namespace,
    environ: Mapping[str, str],
    *,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run ``vault store`` or ``vault fetch``; 0 on success, 1 with one line on stderr on failure."""
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    try:
        return anyio.run(_run, args, environ, stdin, stdout, stderr)
    except GatewayError as exc:
        print(f"compose-agent vault {args.vault_command}: error: {exc}", file=stderr)
        return 1


async def _run(
    args: argparse.Namespace, environ: Mapping[str, str], stdin: TextIO, stdout: TextIO, stderr: TextIO
) -> int:
    deployment_hash = args.deployment_hash or environ.get("DEPLOYMENT_HASH")
    if not deployment_hash:
        raise ConfigError("give --deployment-hash or set DEPLOYMENT_HASH")
    key = args.key or environ.get("VAULT_TOKEN_KEY")
    if not key:
        raise ConfigError(f"give --key ({' or '.join(TOKEN_KEYS)}) or set VAULT_TOKEN_KEY")
    if key not in TOKEN_KEYS:
        # A typo here would write a secret the gateway never reads.
        raise ConfigError(f"unknown key {key!r}; use {' or '.join(TOKEN_KEYS)}")
    client = VaultClient.from_env(environ)
    try:
        if args.vault_command == "fetch":
            print(await client.fetch_agent_token(deployment_hash, key), file=stdout)
            return 0
        if args.generate:
            token = secrets.token_urlsafe(32)
        elif args.token == "-":
            token = stdin.readline().rstrip("\r\n")
        else:
            token = args.token
        check_token_value(token)
        await client.store_agent_token(deployment_hash, token, key)
        if args.generate:
            print(token, file=stdout)
        print(f"stored {key} at {client.path(deployment_hash, key)} in Vault at {client.address}", file=stderr)
        return 0
    finally:
        client.close()

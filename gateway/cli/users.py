"""``compose-agent users``: the people who may log in (OAuth clients, the panel) and what they may do.

    compose-agent users add NAME --password-stdin --grant SCOPE [--grant SCOPE ...]
    compose-agent users list [--json]
    compose-agent users grant NAME SCOPE
    compose-agent users revoke NAME SCOPE
    compose-agent users passwd NAME --password-stdin
    compose-agent users remove NAME

People live in ``<state dir>/people.json`` (``COMPOSE_AGENT_STATE_DIR``), or in Vault when
``VAULT_ADDRESS`` is set (at ``secret/{prefix}/{DEPLOYMENT_HASH}/people``): the same place the
gateway reads, which sees every change within a second or two, without a restart. A password is
read from stdin (``--password-stdin``) or asked twice at a terminal; it never appears in argv,
in output or in a log. Exit codes: 0 done, 1 refused or failed (one line on stderr says why), 2 bad usage.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Mapping
from typing import Protocol, TextIO

import anyio

from ..auth.documents import VaultDocument
from ..auth.people import PeopleAdmin, people_document
from ..auth.scopes import VERBS, describe
from ..config import load_settings
from ..errors import GatewayError, InvalidInput

__all__ = ["add_parser", "run"]

_SCOPE_HELP = (
    f"a scope: compose:<verb> with <verb> one of {', '.join(VERBS)}, optionally narrowed to one stack "
    "(compose:write:site) or one host's stack (compose:write:edge/site)"
)


class Subcommands(Protocol):
    """What ``ArgumentParser.add_subparsers()`` returns, as far as this module uses it."""

    def add_parser(
        self, name: str, *, help: str | None = ..., description: str | None = ...
    ) -> argparse.ArgumentParser: ...


def add_parser(subparsers: Subcommands) -> None:
    """Add ``users add|list|grant|revoke|passwd|remove`` to the ``compose-agent`` command line."""
    users = subparsers.add_parser(
        "users",
        help="manage the people who may log in, and their scopes",
        description=(
            "Manage the people who may log in to the gateway's OAuth login page and to the status panel, "
            "and what each may do. They are stored in the state dir (people.json), or in Vault when "
            "VAULT_ADDRESS is set; a running gateway sees every change within a second or two."
        ),
    )
    commands = users.add_subparsers(
        dest="users_command", required=True, metavar="{add,list,grant,revoke,passwd,remove}"
    )

    add = commands.add_parser(
        "add",
        help="add a person with a password and grants",
        description="Add a person. The password is read from stdin (--password-stdin) or asked at a terminal.",
    )
    add.add_argument("name", help="the login name: lowercase letters, digits, '.', '_', '-', '@'")
    add.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    add.add_argument("--grant", action="append", default=[], metavar="SCOPE", help=_SCOPE_HELP + "; repeatable")

    listing = commands.add_parser("list", help="list people and their grants (never passwords)")
    listing.add_argument("--json", action="store_true", help="one JSON document, for scripts")

    for verb, text in (("grant", "give NAME a scope"), ("revoke", "take a scope from NAME")):
        cmd = commands.add_parser(verb, help=text, description=f"{text[0].upper()}{text[1:]}; {_SCOPE_HELP}.")
        cmd.add_argument("name")
        cmd.add_argument("scope", metavar="SCOPE", help=_SCOPE_HELP)

    passwd = commands.add_parser("passwd", help="set a new password for NAME")
    passwd.add_argument("name")
    passwd.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")

    remove = commands.add_parser(
        "remove",
        help="remove NAME: their logins and OAuth tokens stop working within seconds",
    )
    remove.add_argument("name")


def run(
    args: argparse.Namespace,
    environ: Mapping[str, str],
    *,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run one ``users`` command; 0 on success, 1 with one line on stderr when refused or failed."""
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    try:
        return anyio.run(_run, args, environ, stdin, stdout, stderr)
    except GatewayError as exc:
        print(f"compose-agent users {args.users_command}: error: {exc}", file=stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _password(args: argparse.Namespace, stdin: TextIO, stderr: TextIO) -> str:
    """The new password: the first line of stdin, or asked twice at a terminal.

    Raises:
        InvalidInput: no way to read one, or the two answers differ.
    """
    if args.password_stdin:
        return stdin.readline().rstrip("\r\n")
    if not stdin.isatty():
        raise InvalidInput("give the password on stdin with --password-stdin (it is never taken from the command line)")
    first = getpass.getpass(f"Password for {args.name}: ", stream=stderr)
    if getpass.getpass("Again: ", stream=stderr) != first:
        raise InvalidInput("the two passwords differ; nothing was changed")
    return first


async def _run(
    args: argparse.Namespace, environ: Mapping[str, str], stdin: TextIO, stdout: TextIO, stderr: TextIO
) -> int:
    settings = load_settings(environ)
    document = people_document(settings)
    try:
        return await _command(args, PeopleAdmin(document), stdin, stdout, stderr)
    finally:
        if isinstance(document, VaultDocument):
            document.client.close()


async def _command(args: argparse.Namespace, admin: PeopleAdmin, stdin: TextIO, stdout: TextIO, stderr: TextIO) -> int:
    where = admin.document.description
    command = args.users_command
    if command == "list":
        people = await admin.list()
        if args.json:
            rows = [{"name": p.name, "grants": [str(g) for g in p.grants], "created": p.created} for p in people]
            print(json.dumps({"people": rows}, indent=2), file=stdout)
        elif not people:
            print(f"no people yet in {where}; add one with: compose-agent users add NAME --grant SCOPE", file=stderr)
        else:
            for person in people:
                print(f"{person.name}\t{' '.join(str(g) for g in person.grants) or '-'}\t{person.created}", file=stdout)
        return 0
    if command == "add":
        person = await admin.add(args.name, _password(args, stdin, stderr), args.grant)
        print(f"added {person.name} to {where}", file=stderr)
        for scope in person.grants:
            print(f"  {scope}: may {describe(scope)}", file=stderr)
        if not person.grants:
            print("  no grants yet: they may log in but do nothing (compose-agent users grant NAME SCOPE)", file=stderr)
        return 0
    if command == "passwd":
        await admin.set_password(args.name, _password(args, stdin, stderr))
        print(f"set a new password for {args.name} in {where}; their panel logins end now", file=stderr)
        return 0
    if command == "grant":
        if await admin.grant(args.name, args.scope):
            print(f"granted {args.scope} to {args.name}", file=stderr)
        else:
            print(f"{args.name} already holds {args.scope}; nothing changed", file=stderr)
        return 0
    if command == "revoke":
        await admin.revoke(args.name, args.scope)
        print(f"revoked {args.scope} from {args.name}; their tokens lose it within seconds", file=stderr)
        return 0
    await admin.remove(args.name)
    print(f"removed {args.name} from {where}; their logins and tokens stop working within seconds", file=stderr)
    return 0

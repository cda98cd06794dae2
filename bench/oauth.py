"""What OAuth costs: a password check, a token check, a call made with an OAuth token, one whole sign-in.

    python bench/oauth.py [--iterations 200] [--logins 5] [--json out.json]

Times, in this process: a scrypt password check (what each sign-in pays, on purpose), and the
verification of a bearer token, a static one against an OAuth access token (what every request
pays). Then, against a real ``compose-agent serve --public-url ...`` with an empty stacks dir:
``list_stacks`` over Streamable HTTP with the static token and with an OAuth token (the difference
is the per-call cost of OAuth, end to end), and whole sign-ins over plain HTTP (register, the
authorization request, the login form, the consent form, the code exchanged for tokens).
Nothing is created on the engine. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import html
import os
import re
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402 - a script beside its helpers
    Sample,
    free_port,
    run_and_report,
    stop_process,
    time_async_calls,
    time_calls,
    wait_for_health,
)
from mcp import Client  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402

from gateway.auth.documents import FileDocument  # noqa: E402
from gateway.auth.passwords import hash_password, verify_password  # noqa: E402
from gateway.auth.people import People, PeopleAdmin  # noqa: E402
from gateway.auth.principals import TokenStore  # noqa: E402
from gateway.config import Settings  # noqa: E402
from gateway.mcp.access import GatewayTokenVerifier  # noqa: E402
from gateway.mcp.oauth import build_oauth  # noqa: E402

PASSWORD = "a bench password, long enough"
REDIRECT = "http://127.0.0.1:9/callback"
_HIDDEN = re.compile(r'<input type="hidden" name="([a-z_]+)" value="([^"]*)">')


def _fields(page: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for name, value in _HIDDEN.findall(page):
        found.setdefault(name, html.unescape(value))
    return found


async def sign_in(public: str) -> dict[str, str]:
    """One whole sign-in, as a client and a person at a browser make it; returns the token response."""
    async with httpx2.AsyncClient(timeout=60) as http:
        body = {"client_name": "bench", "redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none"}
        client_id = (await http.post(f"{public}/register", json=body)).json()["client_id"]
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
        params = {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": REDIRECT,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "state": "s",
            "resource": f"{public}/mcp",
        }
        login_url = (await http.get(f"{public}/authorize", params=params)).headers["location"]
        login = await http.get(login_url)
        answer = await http.post(
            f"{public}/oauth/login", data={**_fields(login.text), "username": "bench", "password": PASSWORD}
        )
        consent = await http.get(f"{public}{answer.headers['location']}")
        back = await http.post(f"{public}/oauth/consent", data={**_fields(consent.text), "decision": "allow"})
        code = httpx2.URL(back.headers["location"]).params["code"]
        token = await http.post(
            f"{public}/token",
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": REDIRECT,
                "client_id": client_id,
                "code_verifier": verifier,
                "resource": f"{public}/mcp",
            },
        )
        return dict(token.json())


async def in_process(args: argparse.Namespace, state: Path) -> list[Sample]:
    stored = hash_password(PASSWORD)
    samples = [time_calls("scrypt password check", lambda: verify_password(PASSWORD, stored), iterations=args.logins)]
    people = People(FileDocument(state / "people.json"))
    await people.load()
    static = GatewayTokenVerifier(TokenStore({"compose_agent_token": "static-bench-token"}))
    oauth = await build_oauth(Settings(state_dir=state, public_url="http://127.0.0.1:1"), static=static, people=people)
    token, _ = oauth.provider.grants.issue(
        "access", client_id="c", scopes=["compose:read"], ttl=3600, resource=oauth.resource, subject="bench", family="f"
    )
    samples.append(
        await time_async_calls(
            "verify a static token (µs)", lambda: oauth.verifier.verify_token("static-bench-token"), iterations=2000
        )
    )
    samples.append(
        await time_async_calls(
            "verify an OAuth token (µs)", lambda: oauth.verifier.verify_token(token), iterations=2000
        )
    )
    oauth.close()
    for sample in samples[1:]:
        sample.values = [v * 1000 for v in sample.values]  # shown in microseconds
    return samples


async def served(args: argparse.Namespace, state: Path, stacks: Path) -> list[Sample]:
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    static = secrets.token_urlsafe(24)
    env = {**os.environ, "COMPOSE_AGENT_TOKEN": static, "COMPOSE_AGENT_STATE_DIR": str(state)}
    env["CONFIG_PATH"] = str(state / "none.json")
    env["COMPOSE_AGENT_TOKEN_RATE"] = "100000"  # the bench measures calls, not the per-token rate limit
    argv = [sys.executable, "-m", "gateway", "serve", "--port", str(port), "--stacks-dir", str(stacks)]
    log = state / "gateway.log"
    with log.open("wb") as out:
        process = subprocess.Popen([*argv, "--public-url", public], env=env, stdout=out, stderr=subprocess.STDOUT)
    samples: list[Sample] = []
    try:
        wait_for_health(public, process, log)
        samples.append(await time_async_calls("whole sign-in (register to token)", lambda: sign_in(public),
                                              iterations=args.logins, warmup=1))  # fmt: skip
        oauth_token = (await sign_in(public))["access_token"]
        timed = {"static token": Sample("list_stacks over HTTP, static token"),
                 "OAuth token": Sample("list_stacks over HTTP, OAuth token")}  # fmt: skip
        async with contextlib.AsyncExitStack() as stack:
            clients = {}
            for label, token in (("static token", static), ("OAuth token", oauth_token)):
                http = await stack.enter_async_context(
                    httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60)
                )
                transport = streamable_http_client(f"{public}/mcp", http_client=http)
                clients[label] = await stack.enter_async_context(Client(transport, mode="legacy"))
            # Interleaved rounds of ten, so that a change in the machine's load falls on both alike.
            for _ in range(max(1, args.iterations // 10)):
                for label, client in clients.items():
                    for _ in range(10):
                        with timed[label].timing():
                            await client.call_tool("list_stacks", {})
        samples += timed.values()
    finally:
        stop_process(process)
    return samples


async def main(args: argparse.Namespace) -> list[Sample]:
    with tempfile.TemporaryDirectory(prefix="oauth-bench-") as tmp:
        state, stacks = Path(tmp) / "state", Path(tmp) / "stacks"
        stacks.mkdir()
        await PeopleAdmin(FileDocument(state / "people.json")).add("bench", PASSWORD, ["compose:read"])
        return [*await in_process(args, state), *await served(args, state, stacks)]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200, help="list_stacks calls per token kind")
    parser.add_argument("--logins", type=int, default=5, help="password checks and whole sign-ins")
    parser.add_argument("--json", type=Path)
    run_and_report(main, parser.parse_args())

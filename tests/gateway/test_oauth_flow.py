"""Hosted clients connect: the MCP SDK's own OAuth client against a served gateway, a person at the forms.

Each test runs the real ``compose-agent serve --public-url ...``, makes people with the real
``users`` command, and connects with ``mcp.client.auth.OAuthClientProvider`` (discovery, dynamic
registration or a client ID metadata document, PKCE); a scripted person logs in and answers the
consent page over plain HTTP. Stacks run on the real engine.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, cast

import docker
import httpx2
import pytest
from mcp.types import TextContent
from mcp_types import PromptReference, RequestParamsMeta

from gateway.audit import on_behalf_of_meta
from gateway.errors import ERROR_META_KEY, SCOPE_META_KEY
from tests.conftest import STACK_FILES, WEB_WORKER, StackFactory, free_port, random_name
from tests.gateway.conftest import stop_process
from tests.gateway.oauth_fixtures import PASSWORD, audit_lines, connect, run_users, start_oauth_gateway
from tests.gateway.oauth_person import MemoryStorage, ScriptedPerson
from tests.gateway.oauth_tls import MetadataServer, make_certificates, metadata_server
from tests.polling import eventually

__all__ = ["metadata_server"]  # the fixture, imported for its test

pytestmark = [pytest.mark.anyio, pytest.mark.docker]


def claim(person: str) -> RequestParamsMeta:
    """A request's ``_meta`` saying it acts for ``person``."""
    return cast(RequestParamsMeta, on_behalf_of_meta(person))


def text_of(result: Any) -> str:
    return "".join(c.text for c in result.content if isinstance(c, TextContent))


def containers_of(docker_client: docker.DockerClient, project: str) -> list[Any]:
    return list(docker_client.containers.list(all=True, filters={"label": f"com.docker.compose.project={project}"}))


async def test_the_sdks_client_registers_logs_a_person_in_and_lists_stacks(
    tmp_path: Path, stacks: StackFactory
) -> None:
    site = stacks.make(WEB_WORKER, files=STACK_FILES)
    oauth = start_oauth_gateway(tmp_path, stacks.root, people={"alice": ["compose:read"]})
    try:
        person = ScriptedPerson("alice", PASSWORD)
        storage = MemoryStorage()
        async with connect(oauth.url, person, storage=storage) as client:
            listing = await client.call_tool("list_stacks", {})
        assert not listing.is_error, text_of(listing)
        assert site in [s["name"] for s in (listing.structured_content or {})["stacks"]]
        # Dynamic registration happened, and the token carries what alice holds.
        assert storage.client_info is not None and storage.client_info.client_id
        assert storage.tokens is not None and storage.tokens.scope == "compose:read"
        assert storage.tokens.refresh_token and storage.tokens.expires_in == 3600
        # The person saw who asked, and a consent page with Allow and Deny.
        consent = next(page for page in person.pages if "consent-form" in page)
        assert "test client" in consent and 'value="allow"' in consent and 'value="deny"' in consent
        assert '<code data-testid="scope">compose:read</code>' in consent
        # The SDK checked iss (RFC 9207) against the metadata: it was there, and right.
        assert person.result is not None and person.result.iss == oauth.public
    finally:
        stop_process(oauth.gw.process)


async def test_the_same_on_the_2026_07_28_revision(tmp_path: Path, stacks: StackFactory) -> None:
    site = stacks.make(WEB_WORKER, files=STACK_FILES)
    oauth = start_oauth_gateway(tmp_path, stacks.root, people={"alice": ["compose:read"]})
    try:
        async with connect(oauth.url, ScriptedPerson("alice", PASSWORD), mode="auto") as client:
            listing = await client.call_tool("list_stacks", {})
        assert site in [s["name"] for s in (listing.structured_content or {})["stacks"]]
    finally:
        stop_process(oauth.gw.process)


async def test_a_client_id_metadata_document_served_on_loopback_replaces_registration(
    tmp_path: Path, stacks: StackFactory, metadata_server: MetadataServer
) -> None:
    site = stacks.make(WEB_WORKER, files=STACK_FILES)
    # The gateway trusts the test CA the way every TLS client here does: SSL_CERT_FILE.
    oauth = start_oauth_gateway(
        tmp_path, stacks.root, people={"bob": ["compose:read:" + site]}, env={"SSL_CERT_FILE": str(metadata_server.ca)}
    )
    try:
        person = ScriptedPerson("bob", PASSWORD)
        storage = MemoryStorage()
        async with connect(oauth.url, person, storage=storage, client_metadata_url=metadata_server.url) as client:
            listing = await client.call_tool("list_stacks", {})
        assert [s["name"] for s in (listing.structured_content or {})["stacks"]] == [site]
        assert storage.client_info is not None and storage.client_info.client_id == metadata_server.url
        assert metadata_server.fetches >= 1
        # No registration: the document's name is what the person was shown.
        assert (
            not (oauth.state / "oauth.json").exists()
            or metadata_server.url not in json.loads((oauth.state / "oauth.json").read_text())["clients"]
        )
        assert any("Metadata-document client" in page for page in person.pages)
        assert "registered client" not in oauth.gw.stderr_text()
    finally:
        stop_process(oauth.gw.process)


async def test_the_persons_grants_decide_stack_by_stack(
    tmp_path: Path, stacks: StackFactory, docker_client: docker.DockerClient
) -> None:
    mine = stacks.make(WEB_WORKER, files=STACK_FILES)
    theirs = stacks.make(WEB_WORKER, files=STACK_FILES)
    oauth = start_oauth_gateway(tmp_path, stacks.root, people={"carol": [f"compose:write:{mine}"]})
    try:
        async with connect(oauth.url, ScriptedPerson("carol", PASSWORD)) as client:
            listing = await client.call_tool("list_stacks", {})
            refused = await client.call_tool("up", {"project": theirs})
            read_refused = await client.call_tool("ps", {"project": theirs})
            done = await client.call_tool("up", {"project": mine})
            # A client cannot say it acts for someone else than the person who authorized it.
            impersonating = await client.call_tool("ps", {"project": mine}, meta=claim("root"))
            as_herself = await client.call_tool("ps", {"project": mine}, meta=claim("carol"))
        # Only the stack carol may touch is even listed; the other is refused with the scope named.
        assert [s["name"] for s in (listing.structured_content or {})["stacks"]] == [mine]
        assert refused.is_error and (refused.meta or {})[ERROR_META_KEY] == "insufficient_scope"
        assert (refused.meta or {})[SCOPE_META_KEY] == f"compose:write:{theirs}"
        assert f"compose:write:{theirs}" in text_of(refused)
        assert (read_refused.meta or {})[SCOPE_META_KEY] == f"compose:read:{theirs}"
        assert containers_of(docker_client, theirs) == []
        # Within the grant, it acts.
        assert not done.is_error, text_of(done)
        assert containers_of(docker_client, mine)
        assert impersonating.is_error and (impersonating.meta or {})[ERROR_META_KEY] == "invalid_input"
        assert not as_herself.is_error
        # Every line of these calls names the person and the client.
        lines = [line for line in audit_lines(oauth.state / "audit.log") if line["tool"] in ("up", "ps")]
        assert {line["on_behalf_of"] for line in lines} == {"carol"}
        assert all(line["caller"].startswith("oauth:") for line in lines)
        refusal = next(line for line in lines if line["arguments"].get("project") == theirs and line["tool"] == "up")
        assert refusal["outcome"] == "refused" and f"compose:write:{theirs}" in refusal["error"]
        ups = [line for line in lines if line["tool"] == "up" and line["arguments"].get("project") == mine]
        assert [line["phase"] for line in ups] == ["intent", "outcome"]
        claimed = [
            line
            for line in lines
            if line["tool"] == "ps" and line.get("outcome") == "refused" and line["arguments"]["project"] == mine
        ]
        assert [line["on_behalf_of"] for line in claimed] == ["carol"]  # the token's person, not the claim
    finally:
        stop_process(oauth.gw.process)


async def test_completion_names_only_the_stacks_and_services_the_persons_grants_show(
    tmp_path: Path, stacks: StackFactory
) -> None:
    prefix = random_name("cmp")
    mine = stacks.make(WEB_WORKER, name=prefix + "a", files=STACK_FILES)
    theirs = stacks.make(WEB_WORKER, name=prefix + "b", files=STACK_FILES)
    oauth = start_oauth_gateway(tmp_path, stacks.root, people={"dana": [f"compose:read:{mine}"]})
    diagnose = PromptReference(type="ref/prompt", name="diagnose_stack")
    triage = PromptReference(type="ref/prompt", name="triage_service")
    try:
        async with connect(oauth.url, ScriptedPerson("dana", PASSWORD)) as client:
            projects = (await client.complete(diagnose, {"name": "project", "value": prefix})).completion
            own = (await client.complete(triage, {"name": "service", "value": ""}, {"project": mine})).completion
            other = (await client.complete(triage, {"name": "service", "value": ""}, {"project": theirs})).completion
    finally:
        stop_process(oauth.gw.process)
    # Completion shows what list_stacks and ps would show her, and not a name more.
    assert projects.values == [mine] and projects.total == 1
    assert own.values == ["web", "worker"]
    assert other.values == [] and other.total == 0


async def test_on_2026_07_28_a_call_outside_the_scopes_is_a_403_naming_the_scope(
    tmp_path: Path, stacks: StackFactory, docker_client: docker.DockerClient
) -> None:
    theirs = stacks.make(WEB_WORKER, files=STACK_FILES)
    oauth = start_oauth_gateway(tmp_path, stacks.root, people={"dave": ["compose:read"]})
    try:
        storage = MemoryStorage()
        person = ScriptedPerson("dave", PASSWORD)
        async with connect(oauth.url, person, storage=storage, mode="auto") as client:
            await client.call_tool("list_stacks", {})
            with pytest.raises(Exception) as raised:
                await client.call_tool("up", {"project": theirs})
        assert "error" in str(raised.value).lower()
        assert storage.tokens is not None
        # The answer itself, as a client sees it on the wire.
        body = {
            "jsonrpc": "2.0",
            "id": 7,
            "method": "tools/call",
            "params": {
                "name": "up",
                "arguments": {"project": theirs},
                "_meta": {
                    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                    "io.modelcontextprotocol/clientCapabilities": {},
                },
            },
        }
        headers = {
            "Authorization": f"Bearer {storage.tokens.access_token}",
            "Mcp-Method": "tools/call",
            "Mcp-Name": "up",
            "MCP-Protocol-Version": "2026-07-28",
            "Accept": "application/json, text/event-stream",
        }
        async with httpx2.AsyncClient(timeout=30) as http:
            response = await http.post(oauth.url, json=body, headers=headers)
        assert response.status_code == 403
        challenge = response.headers["www-authenticate"]
        assert challenge.startswith("Bearer ")
        assert 'error="insufficient_scope"' in challenge
        assert f'scope="compose:write:{theirs}"' in challenge
        assert f'resource_metadata="{oauth.public}/.well-known/oauth-protected-resource/mcp"' in challenge
        assert response.json()["scope"] == f"compose:write:{theirs}"
        assert containers_of(docker_client, theirs) == []
        refusals = [line for line in audit_lines(oauth.state / "audit.log") if line["tool"] == "up"]
        assert refusals and all(line["outcome"] == "refused" and line["on_behalf_of"] == "dave" for line in refusals)
    finally:
        stop_process(oauth.gw.process)


async def test_a_removed_persons_tokens_stop_working_within_5_seconds(tmp_path: Path, stacks: StackFactory) -> None:
    oauth = start_oauth_gateway(tmp_path, stacks.root, people={"erin": ["compose:read"]})
    try:
        storage = MemoryStorage()
        async with connect(oauth.url, ScriptedPerson("erin", PASSWORD), storage=storage) as client:
            assert not (await client.call_tool("list_stacks", {})).is_error
        assert storage.tokens is not None
        token = storage.tokens.access_token
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream"}
        probe = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
        async with httpx2.AsyncClient(timeout=30) as http:
            assert (await http.post(oauth.url, json=probe, headers=headers)).status_code != 401
            removed = oauth.users("remove", "erin")
            assert removed.returncode == 0, removed.stderr
            started = time.monotonic()

            async def refused() -> bool:
                return (await http.post(oauth.url, json=probe, headers=headers)).status_code == 401

            await eventually(refused, timeout=5.0, interval=0.1, what="a removed person's token refused")
            elapsed = time.monotonic() - started
            # Nor does their refresh token get a new one.
            assert storage.client_info is not None and storage.tokens.refresh_token
            answer = await http.post(
                f"{oauth.public}/token",
                data={
                    "grant_type": "refresh_token",
                    "refresh_token": storage.tokens.refresh_token,
                    "client_id": storage.client_info.client_id,
                    "client_secret": storage.client_info.client_secret or "",
                },
            )
        assert elapsed < 5.0
        assert answer.status_code == 400 and answer.json()["error"] == "invalid_grant"
    finally:
        stop_process(oauth.gw.process)


async def test_a_restart_logs_no_one_out(tmp_path: Path, stacks: StackFactory) -> None:
    oauth = start_oauth_gateway(tmp_path, stacks.root, people={"frank": ["compose:read"]})
    storage = MemoryStorage()
    try:
        async with connect(oauth.url, ScriptedPerson("frank", PASSWORD), storage=storage) as client:
            assert not (await client.call_tool("list_stacks", {})).is_error
    finally:
        stop_process(oauth.gw.process)
    stored = (oauth.state / "oauth.json").read_text()
    assert storage.tokens is not None and storage.tokens.access_token not in stored
    assert storage.tokens.refresh_token and storage.tokens.refresh_token not in stored
    again = start_oauth_gateway(tmp_path, stacks.root, state=oauth.state, port=oauth.port)
    try:
        # Nobody is at the browser now: a login would fail the test.
        nobody = ScriptedPerson("frank", "not the password at all")
        async with connect(again.url, nobody, storage=storage) as client:
            assert not (await client.call_tool("list_stacks", {})).is_error
        assert nobody.pages == []
    finally:
        stop_process(again.gw.process)


async def test_no_password_code_or_token_reaches_the_log_or_the_audit(tmp_path: Path, stacks: StackFactory) -> None:
    site = stacks.make(WEB_WORKER, files=STACK_FILES)
    oauth = start_oauth_gateway(tmp_path, stacks.root, people={"gina": [f"compose:read:{site}"]})
    try:
        storage = MemoryStorage()
        person = ScriptedPerson("gina", PASSWORD)
        async with connect(oauth.url, person, storage=storage) as client:
            await client.call_tool("ps", {"project": site})
            await client.call_tool("up", {"project": site})  # refused, and audited
        wrong = ScriptedPerson("gina", "a wrong password, twelve+")
        with pytest.raises(Exception):  # noqa: B017 - the SDK wraps the flow's failure in task groups
            async with connect(oauth.url, wrong) as client:
                await client.call_tool("list_stacks", {})
        assert wrong.final is not None and wrong.final.status_code == 401
    finally:
        stop_process(oauth.gw.process)
    assert storage.tokens is not None and person.result is not None and storage.client_info is not None
    secrets_seen = [
        PASSWORD,
        "a wrong password, twelve+",
        storage.tokens.access_token,
        storage.tokens.refresh_token or "",
        person.result.code,
    ]
    places = {
        "stderr": oauth.gw.stderr_text(),
        "audit": (oauth.state / "audit.log").read_text(),
        "oauth.json": (oauth.state / "oauth.json").read_text(),
        "people.json": (oauth.state / "people.json").read_text(),
    }
    for where, text in places.items():
        for secret in secrets_seen:
            assert secret and secret not in text, f"a secret is in {where}"


async def test_the_gateway_can_serve_https_itself(tmp_path: Path, stacks: StackFactory) -> None:
    site = stacks.make(WEB_WORKER, files=STACK_FILES)
    tls = tmp_path / "tls"
    tls.mkdir()
    make_certificates(tls)
    port = free_port()
    public = f"https://127.0.0.1:{port}"
    state = tmp_path / "state"
    done = run_users(state, "add", "kai", "--password-stdin", "--grant", "compose:read", stdin=PASSWORD + "\n")
    assert done.returncode == 0, done.stderr
    env = {
        **os.environ,
        "COMPOSE_AGENT_TOKEN": "static-token-of-this-test",
        "COMPOSE_AGENT_STATE_DIR": str(state),
        "CONFIG_PATH": str(tmp_path / "none.json"),
    }
    argv = [sys.executable, "-m", "gateway", "serve", "--port", str(port), "--stacks-dir", str(stacks.root)]
    argv += ["--public-url", public, "--tls-cert", str(tls / "server.pem"), "--tls-key", str(tls / "server-key.pem")]
    log = tmp_path / "gateway.err"
    with log.open("wb") as err:
        process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=err)
    trust = ssl.create_default_context(cafile=str(tls / "ca.pem"))
    try:
        async with httpx2.AsyncClient(verify=trust, timeout=5) as http:

            async def healthy() -> bool:
                assert process.poll() is None, log.read_text()
                try:
                    return (await http.get(f"{public}/health")).status_code == 200
                except httpx2.HTTPError:
                    return False

            await eventually(healthy, timeout=30, interval=0.1, what="the gateway answering over HTTPS")
            issuer = (await http.get(f"{public}/.well-known/oauth-authorization-server")).json()["issuer"]
        assert issuer == public
        person = ScriptedPerson("kai", PASSWORD, verify=trust)
        async with connect(f"{public}/mcp", person, verify=trust) as client:
            listing = await client.call_tool("list_stacks", {})
        assert site in [s["name"] for s in (listing.structured_content or {})["stacks"]]
    finally:
        stop_process(process)

"""A stack's secret from a real OpenBao, through a real gateway process, the SDK's client, the panel and Chromium.

The service prints its secret plainly, base64-encoded (with and without ``echo``'s newline), from
its mounted Compose secret and inside a URL; its healthcheck proves it received exactly the value.
Then every tool, resource and prompt, every notification, the audit file, the gateway's own log
(at DEBUG), its state dir, and the panel's pages and API are searched for the value in each form
the redactor knows: none holds it, and the words around it are still there. A rotation in Vault
shows in ``plan`` and is applied by ``up``.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.types import CallToolResult, TextContent
from playwright.async_api import Browser, expect

from tests.conftest import StackFactory, free_port
from tests.gateway.approvals_fixtures import agent
from tests.gateway.secrets_fixtures import EXPECTED_LINES, leaks, new_value, secret_stack, sha
from tests.gateway.vault_fixtures import OpenBao, fresh_hash, openbao
from tests.statuspanel.browser import browser, logged_in_page
from tests.statuspanel.conftest import Gateway, _clean_env, poll, start_panel

pytestmark = [pytest.mark.anyio, pytest.mark.docker, pytest.mark.browser]
__all__ = ["browser", "openbao"]


def _gateway(stacks: StackFactory, tmp_path: Path, openbao: OpenBao) -> Gateway:
    """``compose-agent serve`` at DEBUG, its stacks' secrets in ``openbao``, both tokens known."""
    port = free_port()
    env = {**_vault_env(openbao), "COMPOSE_AGENT_TOKEN": "", "STATUS_PANEL_TOKEN": ""}
    agent_token, panel_token = env.pop("_agent"), env.pop("_panel")
    env.update(
        {
            "COMPOSE_AGENT_STATE_DIR": str(tmp_path / "gateway-state"),
            "CONFIG_PATH": str(tmp_path / "no-config.json"),
        }
    )
    args = ["compose-agent", "serve", "--port", str(port), "--stacks-dir", str(stacks.root), "--log-level", "DEBUG"]
    gw = Gateway(
        args=args,
        env=_clean_env(**env),
        log=tmp_path / "gateway.log",
        base=f"http://127.0.0.1:{port}",
        port=port,
        agent_token=agent_token,
        panel_token=panel_token,
    )
    gw.launch()
    return gw


def _vault_env(openbao: OpenBao) -> dict[str, str]:
    """Vault for the stacks' secrets and, as with any gateway given a Vault, for its own tokens too."""
    deployment = fresh_hash()
    tokens = {"_agent": secrets.token_urlsafe(24), "_panel": secrets.token_urlsafe(24)}
    openbao.write_token(f"agent/{deployment}/compose_agent_token", tokens["_agent"])
    openbao.write_token(f"agent/{deployment}/status_panel_token", tokens["_panel"])
    return {
        "VAULT_ADDRESS": openbao.address,
        "VAULT_TOKEN": openbao.root_token,
        "DEPLOYMENT_HASH": deployment,
        **tokens,
    }


class Seen:
    """Everything the client received: results, resources, prompts, notifications, as JSON text."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def add(self, item: Any) -> Any:
        self.parts.append(item.model_dump_json() if hasattr(item, "model_dump_json") else json.dumps(item, default=str))
        return item

    async def progress(self, progress: float, total: float | None, message: str | None) -> None:
        self.parts.append(f"progress {message}")

    async def log(self, params: Any) -> None:
        self.add(params)

    def text(self) -> str:
        return "\n".join(self.parts)


def _text(result: CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, TextContent))


async def _call(client: Client, seen: Seen, tool: str, **arguments: Any) -> CallToolResult:
    result = await client.call_tool(tool, arguments, progress_callback=seen.progress)
    return seen.add(result)  # type: ignore[no-any-return]


async def test_no_tool_resource_prompt_log_or_page_holds_the_secret(
    stacks: StackFactory, openbao: OpenBao, tmp_path: Path, browser: Browser
) -> None:
    secret = secret_stack(new_value(), new_value())
    openbao.request("POST", f"secret/data/{secret.path}", {"data": {"db": secret.value}})
    name = stacks.make(secret.compose(stacks.image), name=secret.name)
    gateway = _gateway(stacks, tmp_path, openbao)
    panel = None
    seen = Seen()
    rotated = secret.rotated
    try:
        async with agent(gateway.mcp_url, gateway.agent_token, logging_callback=seen.log) as client:
            with anyio.fail_after(120):
                up = await _call(client, seen, "up", project=name, wait=True)
            assert not up.is_error, _text(up)
            ps = await _call(client, seen, "ps", project=name)
            assert [s["health"] for s in (ps.structured_content or {})["services"]] == ["healthy"]
            logs = await _call(client, seen, "logs", project=name, tail=100)
            for line in EXPECTED_LINES:
                assert line in _text(logs), _text(logs)
            # Every other tool, each with arguments it accepts.
            compose_yaml = secret.compose(stacks.image) + "# deployed\n"
            calls: dict[str, dict[str, Any]] = {
                "list_stacks": {},
                "ps": {"project": name},
                "logs": {"project": name, "grep": "before", "timestamps": True},
                "config": {"project": name},
                "plan": {"project": name},
                "versions": {"project": name},
                "restart": {"project": name},
                "stop": {"project": name},
                "start": {"project": name},
                "up": {"project": name, "wait": True},
                "deploy": {"project": name, "compose_yaml": compose_yaml, "wait": True},
                "rollback": {"project": name, "wait": True},
                "approve": {"id": "a" * 32},
                "reject": {"id": "a" * 32},
                "down": {"project": name},
            }
            listed = {tool.name for tool in (await client.list_tools()).tools}
            assert listed == set(calls), "a tool this test does not call: add it"
            for tool, arguments in calls.items():
                if tool == "down":
                    continue
                with anyio.fail_after(120):
                    result = await _call(client, seen, tool, **arguments)
                # deploy and rollback resolve the secret again; approve and reject are refused (no such id).
                assert result.is_error == (tool in ("approve", "reject")), (tool, _text(result))
            # An agent that pastes the value into a call: refused, and the refusal is audited and logged.
            pasted = await _call(client, seen, "restart", project=name, services=[secret.value])
            assert pasted.is_error and "[redacted:DB_PASSWORD]" in _text(pasted), _text(pasted)
            config = await _call(client, seen, "config", project=name)
            assert "${DB_PASSWORD}" in _text(config)  # the reference, as written, and never its value
            # Resources (listed and templated) and prompts.
            for resource in seen.add(await client.list_resources()).resources:
                seen.add(await client.read_resource(str(resource.uri)))
            for uri in (
                f"compose://stacks/{name}/logs?tail=100",
                f"compose://stacks/{name}/status",
                f"compose://stacks/{name}/compose.yaml",
            ):
                seen.add(await client.read_resource(uri))
            seen.add(await client.get_prompt("diagnose_stack", {"project": name}))
            seen.add(await client.get_prompt("triage_service", {"project": name, "service": "app"}))

            # Rotation: the plan names the secret and the service; up recreates it with the new value.
            openbao.request("POST", f"secret/data/{secret.path}", {"data": {"db": rotated}})
            plan = await _call(client, seen, "plan", project=name)
            actions = {a["service"]: a for a in (plan.structured_content or {})["actions"]}
            assert actions["app"]["action"] == "recreate", actions
            assert "DB_PASSWORD" in actions["app"]["reason"], actions
            with anyio.fail_after(120):
                again = await _call(client, seen, "up", project=name, wait=True)
            assert not again.is_error, _text(again)
            logs = await _call(client, seen, "logs", project=name, tail=20)
            assert "plain-before [redacted:DB_PASSWORD] plain-after" in _text(logs)
            # The recreated service got the new value (its SHA-256 is no secret: the file holds it).
            assert f"sha-before {sha(rotated)} sha-after" in _text(logs), _text(logs)
            assert leaks(seen.text(), rotated) == [] and leaks(seen.text(), secret.value) == []

            # The panel (client mode), in Chromium and over its API.
            panel = start_panel(tmp_path, env={"COMPOSE_AGENT_URL": gateway.mcp_url}, token=gateway.panel_token)
            page, _ = await logged_in_page(browser, panel, wrong_first=False)
            pages = []
            await page.goto(f"{panel.base}/stacks/{name}")
            await expect(page.get_by_test_id(f"state-{name}-app")).to_have_text("running")
            pages.append(await page.content())
            await page.goto(f"{panel.base}/stacks/{name}/logs")
            await expect(page.get_by_test_id("log-output")).to_contain_text("plain-after", timeout=20_000)
            text = await page.get_by_test_id("log-output").inner_text()
            assert "plain-before [redacted:DB_PASSWORD] plain-after" in text
            pages.append(await page.content())
            await page.context.close()
            with panel.client() as http:
                for path in (f"/api/v1/stacks/{name}", f"/api/v1/stacks/{name}/logs?tail=100", "/api/v1/stacks"):
                    response = http.get(path)
                    assert response.status_code == 200, response.text
                    pages.append(response.text)
            assert "[redacted:DB_PASSWORD]" in "\n".join(pages)

            with anyio.fail_after(120):
                assert not (await _call(client, seen, "down", project=name)).is_error
    finally:
        if panel is not None:
            panel.stop()
        gateway.stop()
    everything = {
        "what the client received": seen.text(),
        "the audit": (tmp_path / "gateway-state" / "audit.log").read_text(errors="replace"),
        "the gateway's log": gateway.output(),
        "the panel's pages": "\n".join(pages),
        "the panel's log": panel.output() if panel is not None else "",
        "the state dir": b"".join(
            p.read_bytes() for p in (tmp_path / "gateway-state").rglob("*") if p.is_file()
        ).decode("utf-8", "replace"),
        "the stack's folder": b"".join(p.read_bytes() for p in (stacks.root / name).rglob("*") if p.is_file()).decode(
            "utf-8", "replace"
        ),
    }
    for where, text in everything.items():
        assert leaks(text, secret.value) == [], where
        assert leaks(text, rotated) == [], where
    # The log says what happened around the secret, and the audit has every call.
    assert "[redacted:DB_PASSWORD]" in everything["what the client received"]
    assert '"tool":"rollback"' in everything["the audit"]
    assert "[redacted:DB_PASSWORD]" in everything["the audit"]  # the pasted value, in the refusal's arguments


async def test_the_legacy_panel_redacts_what_it_ran_itself(
    stacks: StackFactory, openbao: OpenBao, tmp_path: Path
) -> None:
    secret = secret_stack(new_value())
    openbao.request("POST", f"secret/data/{secret.path}", {"data": {"db": secret.value}})
    name = stacks.make(secret.compose(stacks.image), name=secret.name)
    env = _vault_env(openbao)
    token = env.pop("_panel")
    del env["_agent"]
    env.update({"COMPOSE_AGENT_ENABLED": "false", "STACKS_DIR": str(stacks.root)})
    panel = start_panel(tmp_path, env=env, token=token, args=["--log-level", "debug"])
    try:
        with panel.client() as http:
            up = http.post(f"/api/v1/stacks/{name}/up", timeout=120)
            assert up.status_code == 200, up.text

            def printed_all() -> bool:
                # up returns once the container started; its lines follow within moments.
                text = http.get(f"/api/v1/stacks/{name}/logs?tail=100").text
                return all(line in text for line in EXPECTED_LINES)

            poll(printed_all, timeout=30, what="the service's lines in the panel's logs")
            answers = []
            for path in (f"/api/v1/stacks/{name}/logs?tail=100", f"/api/v1/stacks/{name}", f"/stacks/{name}/logs"):
                response = http.get(path)
                assert response.status_code == 200, response.text
                answers.append(response.text)
            logs = json.loads(answers[0])
            text = json.dumps(logs)
            for line in EXPECTED_LINES:
                assert line in text
            down = http.post(f"/api/v1/stacks/{name}/down", timeout=120)
            assert down.status_code == 200, down.text
    finally:
        panel.stop()
    for where, text in {"answers": "\n".join(answers), "log": panel.output()}.items():
        assert leaks(text, secret.value) == [], where

"""What the approvals tests share: a served gateway whose policy makes calls wait, an agent, and the people.

The agent holds the gateway's own token (``compose_agent_token``) and speaks Streamable HTTP with the
SDK's client; people approve with their own OAuth token (the SDK's OAuth client, a scripted person at
the forms) or through the status panel's token naming them, as the panel does.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal, cast

import docker
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult, TextContent
from mcp_types import RequestParamsMeta

from gateway.audit import on_behalf_of_meta
from gateway.errors import APPROVAL_META_KEY, APPROVAL_URL_META_KEY, ERROR_META_KEY
from tests.conftest import StackFactory
from tests.gateway.oauth_fixtures import OAuthGateway, audit_lines, start_oauth_gateway

__all__ = [
    "PANEL_URL",
    "agent",
    "approval_of",
    "chain",
    "claim",
    "containers",
    "kind",
    "served",
    "text_of",
    "write_config",
]

PANEL_URL = "https://panel.example.com"
Mode = Literal["legacy", "auto"]


def write_config(tmp_path: Path, policy: dict[str, Any], **extra: Any) -> Path:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"policy": policy, "panel_url": PANEL_URL, **extra}))
    return config


def served(
    tmp_path: Path,
    stacks: StackFactory,
    policy: dict[str, Any],
    *,
    people: dict[str, list[str]] | None = None,
    state: Path | None = None,
) -> OAuthGateway:
    """A real ``compose-agent serve`` with OAuth on, ``policy`` in its config.json and ``people`` added."""
    config = write_config(tmp_path, policy)
    return start_oauth_gateway(tmp_path, stacks.root, people=people, state=state, env={"CONFIG_PATH": str(config)})


@asynccontextmanager
async def agent(url: str, token: str, *, mode: Mode = "legacy", **options: Any) -> AsyncIterator[Client]:
    """The SDK's client over Streamable HTTP with a static token (the agent's, or the panel's)."""
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=120)) as http:
        async with Client(streamable_http_client(url, http_client=http), mode=mode, **options) as client:
            yield client


def claim(person: str) -> RequestParamsMeta:
    """The ``_meta`` the panel sends when it acts for ``person``."""
    return cast(RequestParamsMeta, on_behalf_of_meta(person))


def text_of(result: CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, TextContent))


def kind(result: CallToolResult) -> str | None:
    return (result.meta or {}).get(ERROR_META_KEY)


def approval_of(result: CallToolResult) -> str:
    """The approval an approval_required result names, checked against its text and its page."""
    assert result.is_error and kind(result) == "approval_required", text_of(result)
    assert result.structured_content is None
    meta = result.meta or {}
    approval = meta[APPROVAL_META_KEY]
    assert isinstance(approval, str) and approval in text_of(result)
    assert meta[APPROVAL_URL_META_KEY] == f"{PANEL_URL}/approvals/{approval}"
    return str(approval)


def containers(docker_client: docker.DockerClient, project: str) -> dict[str, str]:
    """service -> container id, for every container of ``project``."""
    found = docker_client.containers.list(all=True, filters={"label": f"com.docker.compose.project={project}"})
    return {c.labels["com.docker.compose.service"]: c.id for c in found}


def chain(audit: Path, approval: str) -> list[tuple[Any, ...]]:
    """The audit lines of one approval, in order: (tool, phase, outcome, step, caller, person)."""
    return [
        (
            line["tool"],
            line["phase"],
            line.get("outcome"),
            line["approval_step"],
            line["caller"],
            line.get("on_behalf_of"),
        )
        for line in audit_lines(audit)
        if line.get("approval") == approval
    ]

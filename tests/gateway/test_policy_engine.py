"""The policy guard on the real engine: refused stacks create nothing, ordinary ones still run, and
neither ``config`` nor a container ever shows the gateway's environment or a file outside the stack."""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import anyio
import docker
import httpx2
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.types import TextContent

import gateway.reads
from gateway.audit import AuditLog
from gateway.config import load_settings
from gateway.errors import ERROR_META_KEY, PolicyRefused
from gateway.metrics import ControlPlane
from gateway.operations import ComposeOperations
from gateway.policy.rules import Policy, StackRules
from tests.conftest import StackFactory
from tests.gateway.conftest import start_gateway, stop_process
from tests.gateway.policy_cases import HOSTILE, ORDINARY, OUTSIDE_MARKER, ordinary_files

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

# A value of the gateway's own environment that no stack may ever see.
ENV_MARKER = f"gateway-env-marker-{secrets.token_hex(4)}"


def make_ops(root: Path, audit: AuditLog, policy: Policy | None = None) -> ComposeOperations:
    settings = load_settings({"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root")}, stacks_dir=root)
    if policy is not None:
        settings = settings.model_copy(update={"policy": policy})
    environ = {**os.environ, "THE_MARKER": ENV_MARKER, "AWS_SECRET_ACCESS_KEY": ENV_MARKER}
    return ComposeOperations.from_settings(settings, plane=ControlPlane.COMPOSE_AGENT, audit=audit, environ=environ)


@pytest.fixture
def guarded(stacks: StackFactory, audit_path: Path) -> Iterator[ComposeOperations]:
    audit = AuditLog(audit_path)
    operations = make_ops(stacks.root, audit)
    yield operations
    operations.close()
    audit.close()


def footprint(client: docker.DockerClient, project: str) -> dict[str, list[str]]:
    """Everything of ``project`` on the engine: by Compose's label, and by the names Compose would give."""
    label = {"label": f"com.docker.compose.project={project}"}
    containers = {c.name for c in client.containers.list(all=True, filters=label)}
    containers |= {c.name for c in client.containers.list(all=True, filters={"name": project})}
    networks = {n.name for n in client.networks.list(filters=label)}
    networks |= {n.name for n in client.networks.list() if n.name.startswith(project)}
    volumes = {v.name for v in client.volumes.list(filters=label)}
    volumes |= {v.name for v in client.volumes.list() if v.name.startswith(project)}
    images = {tag for image in client.images.list() for tag in image.tags if tag.startswith(project)}
    return {
        "containers": sorted(containers),
        "networks": sorted(networks),
        "volumes": sorted(volumes),
        "images": sorted(images),
    }


@pytest.mark.parametrize(("compose", "files", "rules"), [case[1:] for case in HOSTILE], ids=[c[0] for c in HOSTILE])
async def test_a_hostile_stack_is_refused_by_up_and_nothing_is_created(
    guarded: ComposeOperations,
    stacks: StackFactory,
    outside: Path,
    docker_client: docker.DockerClient,
    audit_path: Path,
    compose: str,
    files: dict[str, str],
    rules: set[str],
) -> None:
    name = stacks.make(compose.replace("{outside}", str(outside)), files=files)
    with pytest.raises(PolicyRefused) as caught:
        await guarded.up(name)
    assert rules <= {v.rule for v in caught.value.violations}
    assert OUTSIDE_MARKER not in str(caught.value)
    assert footprint(docker_client, name) == {"containers": [], "networks": [], "volumes": [], "images": []}
    assert not (stacks.root / name / "PWNED").exists()
    last = json.loads(audit_path.read_text().splitlines()[-1])
    assert (last["tool"], last["outcome"]) == ("up", "refused") and all(rule in last["error"] for rule in rules)


async def test_an_ordinary_stack_still_runs(
    guarded: ComposeOperations, stacks: StackFactory, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    name = stacks.make(ORDINARY, files=ordinary_files(stacks.image))
    shutil.copy(shutil.which("busybox") or "/bin/busybox", stacks.root / name / "api" / "busybox")
    try:
        result = await guarded.up(name, wait=True)
        assert result.ok
        states = {s.service: (s.state, s.health) for s in (await guarded.ps(name)).services}
        assert states == {
            "web": ("running", "healthy"),
            "api": ("running", None),
            "worker": ("running", None),
            "extra": ("running", None),
        }
        env = docker_client.containers.get(f"{name}-api-1").attrs["Config"]["Env"]
        assert "TAG=from-dotenv" in env and "MODE=test" in env
        ports = docker_client.containers.get(f"{name}-web-1").attrs["NetworkSettings"]["Ports"]["8080/tcp"]
        assert {p["HostIp"] for p in ports} == {"127.0.0.1"}
    finally:
        await guarded.down(name, volumes=True)
        for image in docker_client.images.list(name=f"{name}-api"):
            docker_client.images.remove(image.id, force=True)


async def test_an_operator_exception_allows_exactly_that_rule_for_exactly_that_stack(
    stacks: StackFactory, audit_path: Path, docker_client: docker.DockerClient
) -> None:
    compose = "services:\n  a:\n    image: {image}\n    init: true\n    command: ['sleep', '3600']\n"
    compose += "    cap_add: [NET_ADMIN]\n"
    excepted, other = stacks.make(compose), stacks.make(compose)
    also_unconfined = stacks.make(compose + "    security_opt: ['seccomp:unconfined']\n")
    policy = Policy(
        stacks={excepted: StackRules(allow=("capabilities",)), also_unconfined: StackRules(allow=("capabilities",))}
    )
    audit = AuditLog(audit_path)
    ops = make_ops(stacks.root, audit, policy)
    try:
        await ops.up(excepted)
        caps = docker_client.containers.get(f"{excepted}-a-1").attrs["HostConfig"]["CapAdd"]
        assert caps == ["NET_ADMIN"] or caps == ["CAP_NET_ADMIN"]
        with pytest.raises(PolicyRefused) as refused_other:
            await ops.up(other)
        assert [v.rule for v in refused_other.value.violations] == ["capabilities"]
        with pytest.raises(PolicyRefused) as refused_unconfined:
            await ops.up(also_unconfined)
        assert [v.rule for v in refused_unconfined.value.violations] == ["security_opt"]
        assert footprint(docker_client, other)["containers"] == []
        assert footprint(docker_client, also_unconfined)["containers"] == []
    finally:
        ops.close()
        audit.close()


LEAKY = """
services:
  a:
    image: {image}
    init: true
    command: ["sleep", "3600"]
    environment:
      - THE_MARKER
      - AWS_SECRET_ACCESS_KEY
      - INTERPOLATED=${THE_MARKER:-absent}
      - FROM_DOTENV=${LOCAL_VALUE}
"""


async def test_config_and_containers_never_carry_the_gateways_environment(
    guarded: ComposeOperations, stacks: StackFactory, docker_client: docker.DockerClient
) -> None:
    name = stacks.make(LEAKY, files={".env": "LOCAL_VALUE=stack-own\n"})
    shown = (await guarded.config(name)).config
    environment = shown["services"]["a"]["environment"]  # type: ignore[index]
    assert ENV_MARKER not in json.dumps(shown)
    assert environment["INTERPOLATED"] == "absent" and environment["FROM_DOTENV"] == "stack-own"
    await guarded.up(name)
    env = docker_client.containers.get(f"{name}-a-1").attrs["Config"]["Env"]
    assert not any(ENV_MARKER in entry for entry in env)
    assert "INTERPOLATED=absent" in env and "FROM_DOTENV=stack-own" in env


async def test_list_stacks_and_ps_mark_a_refused_stack_with_its_rule_ids(
    guarded: ComposeOperations, stacks: StackFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    refused = stacks.make("services:\n  a:\n    image: {image}\n    privileged: true\n    network_mode: host\n")
    fine = stacks.make("services:\n  a:\n    image: {image}\n")
    # With no time to judge, a first listing shows the stacks without marks rather than waiting.
    monkeypatch.setattr(gateway.reads, "MARK_BUDGET_S", 0.0)
    assert all(s.policy is None for s in (await guarded.list_stacks()).stacks)
    monkeypatch.undo()
    with anyio.fail_after(60):
        while True:
            listed = {s.name: s.policy for s in (await guarded.list_stacks()).stacks}
            refused_mark, fine_mark = listed[refused], listed[fine]
            if refused_mark is not None and fine_mark is not None:
                break
    assert not refused_mark.allowed and refused_mark.rules == ["privileged", "host_namespaces"]
    assert fine_mark.allowed and fine_mark.rules == []
    ps = await guarded.ps(refused)
    assert ps.policy is not None and ps.policy.rules == ["privileged", "host_namespaces"]
    assert [s.state for s in ps.services] == ["missing"]


async def test_down_on_a_stack_that_now_references_outside_files_acts_on_its_last_judged_model_without_reading_them(
    guarded: ComposeOperations, stacks: StackFactory, outside: Path, docker_client: docker.DockerClient
) -> None:
    name = stacks.make("services:\n  a:\n    image: {image}\n    init: true\n    command: ['sleep', '3600']\n")
    await guarded.up(name)
    # Not YAML: had Compose read it while loading for down, its error would quote the marker.
    (outside / "other.yaml").write_text(f"{OUTSIDE_MARKER}: [unclosed\n")
    (stacks.root / name / "compose.yaml").write_text(f"include:\n  - {outside}/other.yaml\nservices: {{}}\n")
    result = await guarded.down(name)
    assert result.message == f"down finished on '{name}'"
    assert OUTSIDE_MARKER not in result.message + "".join(result.events)
    assert footprint(docker_client, name)["containers"] == []


async def test_read_only_mode_shows_no_gateway_variable_and_no_outside_file(
    tmp_path: Path, stacks: StackFactory, outside: Path
) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"policy": {"pass_env": ["PASSED_ON_PURPOSE"]}}))
    leaky = stacks.make(LEAKY + "      - PASSED=${PASSED_ON_PURPOSE}\n", files={".env": "LOCAL_VALUE=stack-own\n"})
    outside_env = stacks.make(f"services:\n  a:\n    image: {{image}}\n    env_file: {outside}/secret.env\n")
    env = {
        "THE_MARKER": ENV_MARKER,
        "AWS_SECRET_ACCESS_KEY": ENV_MARKER,
        "PASSED_ON_PURPOSE": "operator-chose-this",
        "CONFIG_PATH": str(config),
    }
    gateway = start_gateway(tmp_path, stacks.root, "--read-only", env=env)
    try:
        async with httpx2.AsyncClient(headers=gateway.headers()) as http:
            async with streamable_http_client(gateway.url, http_client=http) as (read, write, *_):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    tools = {tool.name for tool in (await session.list_tools()).tools}
                    shown = await session.call_tool("config", {"project": leaky})
                    refused = await session.call_tool("config", {"project": outside_env})
    finally:
        stop_process(gateway.process)
    assert "up" not in tools and "config" in tools
    assert not shown.is_error
    text = json.dumps(shown.structured_content)
    assert ENV_MARKER not in text and "operator-chose-this" in text and "stack-own" in text
    assert refused.is_error and (refused.meta or {}).get(ERROR_META_KEY) == "policy_violation"
    message = refused.content[0]
    assert isinstance(message, TextContent)
    assert "outside_files" in message.text and OUTSIDE_MARKER not in message.text
    assert ENV_MARKER not in gateway.stderr_text()

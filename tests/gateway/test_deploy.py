"""deploy, plan, rollback and versions through the SDK's in-memory client, against a real engine and Compose."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import docker
import pytest
from mcp import Client
from mcp.types import CallToolResult

from gateway.deploy.versions import STATE_DIRNAME
from gateway.errors import ERROR_META_KEY
from gateway.mcp.server import build_server
from gateway.operations import ComposeOperations
from tests.conftest import STACK_FILES, WEB_WORKER, StackFactory, random_name

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

TWO = """
services:
  web:
    image: {image}
    init: true
    command: ["sleep", "3600"]
    environment:
      GREETING: ${{GREETING:-unset}}
  worker:
    image: {image}
    init: true
    command: ["sleep", "{worker_sleep}"]
"""


def two(stacks: StackFactory, worker_sleep: int = 3601) -> str:
    return TWO.format(image=stacks.image, worker_sleep=worker_sleep)


def content(result: CallToolResult) -> dict[str, Any]:
    assert not result.is_error, result.content
    structured: dict[str, Any] | None = result.structured_content
    assert structured is not None
    return structured


def error_text(result: CallToolResult, kind: str) -> str:
    assert result.is_error and result.structured_content is None
    assert (result.meta or {}).get(ERROR_META_KEY) == kind, (result.meta, result.content)
    return result.content[0].text  # type: ignore[union-attr]


def container_ids(client: docker.DockerClient, project: str) -> dict[str, str]:
    found = client.containers.list(all=True, filters={"label": f"com.docker.compose.project={project}"})
    return {c.labels["com.docker.compose.service"]: c.id for c in found}


def versions_on_disk(stacks: StackFactory, project: str) -> list[str]:
    folder = stacks.root / STATE_DIRNAME / "versions" / project
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


async def test_deploy_creates_a_new_two_service_stack_and_both_run(
    ops: ComposeOperations, stacks: StackFactory, docker_client: docker.DockerClient
) -> None:
    project = random_name("d")
    stacks.track(project)
    greeting = """a "quoted" $HOME ${HOME} \\n 'single' # not a comment"""
    async with Client(build_server(ops)) as client:
        deployed = content(
            await client.call_tool(
                "deploy", {"project": project, "compose_yaml": two(stacks), "env": {"GREETING": greeting}, "wait": True}
            )
        )
        ps = content(await client.call_tool("ps", {"project": project}))
        listed = content(await client.call_tool("list_stacks", {}))
        versions = content(await client.call_tool("versions", {"project": project}))

    assert deployed["version"] == 1 and deployed["previous_version"] is None and deployed["created"] is True
    assert {c["service"]: c["change"] for c in deployed["changes"]} == {"web": "added", "worker": "added"}
    assert deployed["env_names"] == ["GREETING"]
    assert {s["service"]: s["state"] for s in ps["services"]} == {"web": "running", "worker": "running"}
    folder = stacks.root / project
    assert (folder / "compose.yaml").read_text() == two(stacks)
    assert stat.S_IMODE((folder / ".env").stat().st_mode) == 0o600
    # The value reaches the container exactly: nothing interpolated, unescaped or cut at '#'.
    env = docker_client.containers.get(f"{project}-web-1").attrs["Config"]["Env"]
    assert f"GREETING={greeting}" in env
    assert [s["name"] for s in listed["stacks"] if s["name"] == project] == [project]
    assert STATE_DIRNAME not in {s["name"] for s in listed["stacks"]}
    assert versions["current"] == 1
    assert [(v["version"], v["source"], v["current"]) for v in versions["versions"]] == [(1, "deploy", True)]


async def test_invalid_yaml_or_a_file_compose_rejects_changes_nothing(
    ops: ComposeOperations, stacks: StackFactory, docker_client: docker.DockerClient
) -> None:
    project = random_name("d")
    stacks.track(project)
    async with Client(build_server(ops)) as client:
        content(await client.call_tool("deploy", {"project": project, "compose_yaml": two(stacks)}))
        before_ids = container_ids(docker_client, project)
        before_file = (stacks.root / project / "compose.yaml").read_bytes()

        broken = await client.call_tool("deploy", {"project": project, "compose_yaml": "services: [web, {"})
        wrong = await client.call_tool(
            "deploy", {"project": project, "compose_yaml": "services:\n  web:\n    image: x\n    ports: [not-a-port]\n"}
        )
        ghost = random_name("d")
        new_broken = await client.call_tool("deploy", {"project": ghost, "compose_yaml": "services: {web: nope}"})

    assert "Compose rejects this compose file; nothing was changed" in error_text(broken, "invalid_input")
    assert "yaml" in error_text(broken, "invalid_input").lower()
    assert STATE_DIRNAME not in error_text(broken, "invalid_input") + error_text(wrong, "invalid_input")
    assert "nothing was changed" in error_text(wrong, "invalid_input")
    error_text(new_broken, "invalid_input")
    assert (stacks.root / project / "compose.yaml").read_bytes() == before_file
    assert container_ids(docker_client, project) == before_ids
    assert versions_on_disk(stacks, project) == ["1", "current"]
    assert not (stacks.root / ghost).exists() and versions_on_disk(stacks, ghost) == []
    assert list((stacks.root / STATE_DIRNAME / "tmp").iterdir()) == []  # scratch folders are gone


async def test_plan_names_only_the_changed_service_and_deploy_recreates_that_one_alone(
    ops: ComposeOperations, stacks: StackFactory, docker_client: docker.DockerClient
) -> None:
    project = random_name("d")
    stacks.track(project)
    changed = two(stacks, worker_sleep=3602)
    async with Client(build_server(ops)) as client:
        content(await client.call_tool("deploy", {"project": project, "compose_yaml": two(stacks), "wait": True}))
        before = container_ids(docker_client, project)
        before_file = (stacks.root / project / "compose.yaml").read_bytes()

        plan = content(await client.call_tool("plan", {"project": project, "compose_yaml": changed}))
        assert container_ids(docker_client, project) == before  # the plan changed nothing
        assert (stacks.root / project / "compose.yaml").read_bytes() == before_file
        assert versions_on_disk(stacks, project) == ["1", "current"]

        deployed = content(await client.call_tool("deploy", {"project": project, "compose_yaml": changed}))
        after = container_ids(docker_client, project)

    actions = {a["service"]: a for a in plan["actions"]}
    assert {s: a["action"] for s, a in actions.items()} == {"web": "unchanged", "worker": "recreate"}
    assert "configuration changed" in actions["worker"]["reason"]
    assert plan["version"] == 1 and plan["policy"]["allowed"] is True
    assert plan["down"]["containers"] == sorted([f"{project}-web-1", f"{project}-worker-1"])
    assert deployed["version"] == 2 and deployed["previous_version"] == 1
    assert {c["service"]: c["change"] for c in deployed["changes"]} == {"web": "unchanged", "worker": "changed"}
    assert after["web"] == before["web"] and after["worker"] != before["worker"]


async def test_rollback_brings_back_the_file_and_the_container(
    ops: ComposeOperations, stacks: StackFactory, docker_client: docker.DockerClient, audit_path: Path
) -> None:
    project = random_name("d")
    stacks.track(project)
    async with Client(build_server(ops)) as client:
        content(await client.call_tool("deploy", {"project": project, "compose_yaml": two(stacks)}))
        original = docker_client.containers.get(f"{project}-worker-1").labels["com.docker.compose.config-hash"]
        content(await client.call_tool("deploy", {"project": project, "compose_yaml": two(stacks, 3602)}))
        web_id = container_ids(docker_client, project)["web"]

        back = content(await client.call_tool("rollback", {"project": project}))
        worker = docker_client.containers.get(f"{project}-worker-1")
        assert (stacks.root / project / "compose.yaml").read_text() == two(stacks)
        assert worker.labels["com.docker.compose.config-hash"] == original
        assert worker.attrs["Config"]["Cmd"] == ["sleep", "3601"] and worker.status == "running"
        assert container_ids(docker_client, project)["web"] == web_id

        forward = content(await client.call_tool("rollback", {"project": project, "version": 2}))
        again = await client.call_tool("rollback", {"project": project, "version": 2})
        missing = await client.call_tool("rollback", {"project": project, "version": 9})
        versions = content(await client.call_tool("versions", {"project": project}))

    assert (back["action"], back["version"], back["previous_version"]) == ("rollback", 1, 2)
    assert (forward["version"], forward["previous_version"]) == (2, 1)
    assert (stacks.root / project / "compose.yaml").read_text() == two(stacks, 3602)
    assert "already on disk" in error_text(again, "invalid_input")
    assert "kept versions: 1, 2" in error_text(missing, "invalid_input")
    assert versions["current"] == 2 and [v["version"] for v in versions["versions"]] == [1, 2]
    # Every deploy and rollback is audited with its version and the compose file's hash.
    lines = [json.loads(line) for line in audit_path.read_text().splitlines()]
    done = [(r["tool"], r["arguments"]["version"], r["arguments"]["sha256"]) for r in lines if r.get("outcome") == "ok"]
    hashes = {v["version"]: v["sha256"] for v in versions["versions"]}
    assert done == [
        ("deploy", 1, hashes[1]),
        ("deploy", 2, hashes[2]),
        ("rollback", 1, hashes[1]),
        ("rollback", 2, hashes[2]),
    ]
    assert all("compose_yaml" not in r["arguments"] for r in lines)


async def test_deploying_over_a_hand_written_stack_keeps_it_as_a_version_to_roll_back_to(
    ops: ComposeOperations, stacks: StackFactory
) -> None:
    project = stacks.make(WEB_WORKER, files=STACK_FILES)
    original = (stacks.root / project / "compose.yaml").read_text()
    async with Client(build_server(ops)) as client:
        deployed = content(await client.call_tool("deploy", {"project": project, "compose_yaml": two(stacks)}))
        versions = content(await client.call_tool("versions", {"project": project}))
        back = content(await client.call_tool("rollback", {"project": project, "wait": True}))
        ps = content(await client.call_tool("ps", {"project": project}))
        plan = content(await client.call_tool("plan", {"project": project}))

    assert (deployed["version"], deployed["previous_version"], deployed["created"]) == (2, 1, False)
    assert {c["service"]: c["change"] for c in deployed["changes"]} == {"web": "changed", "worker": "changed"}
    assert [(v["version"], v["source"]) for v in versions["versions"]] == [(1, "disk"), (2, "deploy")]
    assert back["version"] == 1
    assert (stacks.root / project / "compose.yaml").read_text() == original
    assert (stacks.root / project / "site" / "index.html").read_text() == STACK_FILES["site/index.html"]
    assert {s["service"]: s["health"] for s in ps["services"]} == {"web": "healthy", "worker": None}
    # What down would take: both containers, and the named volume only with volumes=true.
    assert plan["version"] == 1 and {a["action"] for a in plan["actions"]} == {"unchanged"}
    assert plan["down"]["volumes"] == [
        {"name": f"{project}_data", "kind": "named", "services": ["web"], "removed_by_down_volumes": True}
    ]


async def test_bad_arguments_are_refused_before_anything_is_written(
    ops: ComposeOperations, stacks: StackFactory
) -> None:
    project = random_name("d")
    yaml = two(stacks)
    async with Client(build_server(ops)) as client:
        results = {
            "steering": await client.call_tool(
                "deploy", {"project": project, "compose_yaml": yaml, "env": {"COMPOSE_FILE": "/etc/x"}}
            ),
            "name": await client.call_tool("deploy", {"project": project, "compose_yaml": yaml, "env": {"A-B": "1"}}),
            "newline": await client.call_tool(
                "deploy", {"project": project, "compose_yaml": yaml, "env": {"A": "1\nB=2"}}
            ),
            "path": await client.call_tool("deploy", {"project": "../etc", "compose_yaml": yaml}),
            "size": await client.call_tool("deploy", {"project": project, "compose_yaml": "#" * (256 * 1024 + 1)}),
            "string version": await client.call_tool("rollback", {"project": project, "version": "1"}),
            "no versions": await client.call_tool("rollback", {"project": project}),
        }
    for why, result in results.items():
        assert result.is_error, why
    assert "steer Compose itself" in results["steering"].content[0].text  # type: ignore[union-attr]
    assert not (stacks.root / project).exists()
    assert not (stacks.root / STATE_DIRNAME / "versions" / project).exists()


async def test_the_gateway_will_not_deploy_over_its_own_project(ops: ComposeOperations, stacks: StackFactory) -> None:
    project = random_name("d")
    ops.self_project = project
    async with Client(build_server(ops)) as client:
        result = await client.call_tool("deploy", {"project": project, "compose_yaml": two(stacks)})
    assert "compose-agent itself runs in this project" in error_text(result, "policy_violation")
    assert not (stacks.root / project).exists()


HOSTILE = {
    "privileged": "services:\n  a:\n    image: {image}\n    privileged: true\n",
    "host_bind": "services:\n  a:\n    image: {image}\n    volumes: ['${{SRC}}:/host']\n",
    "docker_socket": "services:\n  a:\n    image: {image}\n    volumes: ['/var/run/docker.sock:/s']\n",
    "outside_files": "services:\n  a:\n    image: {image}\n    env_file: [/etc/shadow]\n",
}


@pytest.mark.parametrize("rule", sorted(HOSTILE))
async def test_a_hostile_deploy_is_refused_and_leaves_no_folder_and_no_container(
    rule: str, ops: ComposeOperations, stacks: StackFactory, docker_client: docker.DockerClient
) -> None:
    project = random_name("d")
    stacks.track(project)
    hostile = HOSTILE[rule].format(image=stacks.image)
    label = {"label": f"com.docker.compose.project={project}"}
    async with Client(build_server(ops)) as client:
        # The variable comes in with the deploy itself: the guard judges the new .env, not the old one.
        call = {"project": project, "compose_yaml": hostile, "env": {"SRC": "/"}}
        refused = await client.call_tool("deploy", call)
        planned = content(await client.call_tool("plan", call))
        assert not (stacks.root / project).exists() and container_ids(docker_client, project) == {}

        content(await client.call_tool("deploy", {"project": project, "compose_yaml": two(stacks)}))
        before = container_ids(docker_client, project)
        over = await client.call_tool("deploy", call)

    text = error_text(refused, "policy_violation")
    assert f"{rule}:" in text and "Only the operator can relax the policy" in text
    assert planned["policy"]["allowed"] is False and rule in planned["policy"]["rules"]
    assert f"{rule}:" in error_text(over, "policy_violation")
    # The refused deploys created nothing, and the one over a running stack changed nothing.
    assert container_ids(docker_client, project) == before
    assert (stacks.root / project / "compose.yaml").read_text() == two(stacks)
    assert versions_on_disk(stacks, project) == ["1", "current"]
    assert docker_client.networks.list(filters=label) != []  # the good deploy's network only
    assert all(not v.name.startswith(project) for v in docker_client.volumes.list())


async def test_a_refused_first_deploy_creates_no_folder_network_or_volume(
    ops: ComposeOperations, stacks: StackFactory, docker_client: docker.DockerClient
) -> None:
    project = random_name("d")
    stacks.track(project)
    hostile = HOSTILE["privileged"].format(image=stacks.image) + "volumes:\n  data:\n"
    async with Client(build_server(ops)) as client:
        refused = await client.call_tool("deploy", {"project": project, "compose_yaml": hostile})
    error_text(refused, "policy_violation")
    assert not (stacks.root / project).exists() and versions_on_disk(stacks, project) == []
    label = {"label": f"com.docker.compose.project={project}"}
    assert container_ids(docker_client, project) == {}
    assert docker_client.networks.list(filters=label) == [] and docker_client.volumes.list(filters=label) == []


async def test_audit_lines_never_hold_an_env_value_or_the_compose_file(
    ops: ComposeOperations, stacks: StackFactory, audit_path: Path
) -> None:
    project = random_name("d")
    stacks.track(project)
    secret = "s3cret-" + random_name("v")
    yaml = two(stacks).replace("3601", "3601 # " + secret)
    async with Client(build_server(ops)) as client:
        # Refused by the input schema (a number is not a string), by validation, and then accepted.
        await client.call_tool("deploy", {"project": project, "compose_yaml": yaml, "env": {"A": secret, "B": 1}})
        await client.call_tool("deploy", {"project": project, "compose_yaml": yaml, "env": {"A\n": secret}})
        content(await client.call_tool("deploy", {"project": project, "compose_yaml": yaml, "env": {"A": secret}}))
    text = audit_path.read_text()
    assert secret not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert [r.get("outcome") for r in lines] == ["refused", "refused", None, "ok"]
    assert all(r["arguments"]["sha256"] == lines[-1]["arguments"]["sha256"] for r in lines)
    assert lines[-1]["arguments"]["env_names"] == ["A"]

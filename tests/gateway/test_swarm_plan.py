"""``plan`` for swarm stacks: the stack file's services against the running service specs.

The unit tests compare stack file entries with specs in the Engine API's shape, the running spec
made from the entry as the docker CLI makes it (the fields the plan reads). The last test plans on
a real three-node swarm (``swarm3``) through the gateway's own operations, reaching the manager over
TLS: specs as the docker CLI really writes them.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.config import load_settings
from gateway.metrics import ControlPlane
from gateway.models import PlanAction
from gateway.operations import ComposeOperations
from gateway.swarm.api import STOPPED_REPLICAS_LABEL
from gateway.swarm.plan import STACK_IMAGE_LABEL, swarm_actions
from gateway.swarm.stackfile import CONFIG_HASH_LABEL, to_stack_file
from tests.conftest import StackFactory
from tests.engines import Swarm

PROJECT = "shop"


def model(**services: dict[str, Any]) -> dict[str, Any]:
    return {"name": PROJECT, "x-compose-agent": {"target": "swarm"}, "services": services}


def web(**changes: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "image": "busybox:1.36",
        "command": ["sh", "-c", "sleep 600"],
        "environment": {"MODE": "live", "API_KEY": "s3cr3t-value"},
        "ports": [{"target": 80, "published": "8080", "protocol": "tcp", "mode": "ingress"}],
        "deploy": {"replicas": 2, "placement": {"max_replicas_per_node": 1}},
    }
    entry.update(changes)
    return entry


def running(project: str, entries: dict[str, dict[str, Any]], **overrides: Any) -> list[dict[str, Any]]:
    """The services ``docker stack deploy`` would have made of ``entries`` (the fields a plan reads)."""
    services = []
    document = to_stack_file(model(**entries)).document["services"]
    for name, entry in document.items():
        deploy = entry.get("deploy") or {}
        placement = deploy.get("placement") or {}
        mode = (
            {"Global": {}}
            if deploy.get("mode") == "global"
            else {"Replicated": {"Replicas": deploy.get("replicas", 1)}}
        )
        spec = {
            "Name": f"{project}_{name}",
            "Labels": {
                **deploy.get("labels", {}),
                "com.docker.stack.namespace": project,
                STACK_IMAGE_LABEL: entry["image"],
            },
            "TaskTemplate": {
                "ContainerSpec": {
                    "Image": entry["image"] + "@sha256:" + "a" * 64,
                    "Args": entry.get("command"),
                    "Env": [f"{k}={v}" for k, v in (entry.get("environment") or {}).items()],
                },
                "Placement": {
                    "Constraints": placement.get("constraints"),
                    "MaxReplicas": placement.get("max_replicas_per_node", 0),
                },
            },
            "Mode": mode,
            "EndpointSpec": {
                "Ports": [
                    {
                        "TargetPort": p["target"],
                        "PublishedPort": int(p["published"]),
                        "Protocol": p["protocol"],
                        "PublishMode": p["mode"],
                    }
                    for p in entry.get("ports") or []
                ]
            },
        }
        services.append({"ID": f"id-{name}", "Spec": spec, **overrides.get(name, {})})
    return services


def plan(wanted: dict[str, dict[str, Any]], have: list[dict[str, Any]]) -> dict[str, PlanAction]:
    return {a.service: a for a in swarm_actions(PROJECT, model(**wanted), have)}


def test_an_unchanged_stack_plans_nothing() -> None:
    actions = plan({"web": web()}, running(PROJECT, {"web": web()}))
    assert actions["web"].action == "unchanged"
    assert actions["web"].reason == "it runs with the same image, replicas and configuration"


def test_a_new_service_is_created_with_its_tasks_and_a_dropped_one_removed() -> None:
    actions = plan(
        {"web": web(), "worker": web(deploy={"replicas": 3})}, running(PROJECT, {"web": web(), "old": web()})
    )
    assert {name: a.action for name, a in actions.items()} == {"web": "unchanged", "worker": "create", "old": "remove"}
    assert actions["worker"].reason == "it has no swarm service yet: Swarm creates it with 3 tasks"
    assert "no longer in the compose file" in actions["old"].reason and "--prune" in actions["old"].reason


def test_a_global_service_is_created_on_every_eligible_node() -> None:
    actions = plan({"agent": web(deploy={"mode": "global"})}, [])
    assert actions["agent"].action == "create" and "one task on every eligible node" in actions["agent"].reason


def test_a_new_image_is_a_rolling_update_naming_both_references() -> None:
    actions = plan({"web": web(image="busybox:1.37")}, running(PROJECT, {"web": web()}))
    assert actions["web"].action == "recreate"
    assert actions["web"].reason == "rolling update of its tasks: image busybox:1.36 -> busybox:1.37"


def test_the_same_image_written_differently_is_not_a_change() -> None:
    have = running(PROJECT, {"web": web(image="busybox")})
    assert plan({"web": web(image="docker.io/library/busybox:latest")}, have)["web"].action == "unchanged"


def test_more_or_fewer_replicas_only_start_or_stop_tasks() -> None:
    have = running(PROJECT, {"web": web()})
    more = plan({"web": web(deploy={"replicas": 5, "placement": {"max_replicas_per_node": 1}})}, have)["web"]
    assert (more.action, more.reason) == ("create", "replicas 2 -> 5: Swarm starts 3 more tasks")
    fewer = plan({"web": web(deploy={"replicas": 1, "placement": {"max_replicas_per_node": 1}})}, have)["web"]
    assert (fewer.action, fewer.reason) == ("remove", "replicas 2 -> 1: Swarm stops 1 task")


def test_environment_changes_are_named_without_their_values() -> None:
    wanted = web(environment={"MODE": "maintenance", "API_KEY": "n3w-s3cr3t", "EXTRA": "1"})
    actions = plan(
        {"web": wanted},
        running(PROJECT, {"web": web(environment={"MODE": "live", "API_KEY": "s3cr3t-value", "OLD": "x"})}),
    )
    reason = actions["web"].reason
    assert actions["web"].action == "recreate"
    assert reason == "rolling update of its tasks: environment +EXTRA -OLD ~API_KEY ~MODE"
    assert "s3cr3t" not in reason and "maintenance" not in reason


def test_ports_command_and_placement_changes_are_diffs() -> None:
    wanted = web(
        command=["sh", "-c", "sleep 900"],
        ports=[{"target": 80, "published": "9090", "protocol": "tcp", "mode": "ingress"}],
        deploy={"replicas": 4, "placement": {"max_replicas_per_node": 2, "constraints": ["node.role==worker"]}},
    )
    reason = plan({"web": wanted}, running(PROJECT, {"web": web()}))["web"].reason
    assert reason.startswith("rolling update of its tasks: ")
    assert "command sh -c 'sleep 600' -> sh -c 'sleep 900'" in reason
    assert "ports +9090:80/tcp -8080:80/tcp" in reason
    assert (
        "placement (no constraints, at most 1 per node) -> (constraints [node.role==worker], at most 2 per node)"
        in reason
    )
    assert reason.endswith("; replicas 2 -> 4")


def test_a_change_only_the_config_hash_sees_is_still_a_rolling_update() -> None:
    wanted = web(healthcheck={"test": ["CMD", "true"], "interval": "5s"})
    have = running(PROJECT, {"web": web()})
    old = have[0]["Spec"]["Labels"][CONFIG_HASH_LABEL]
    action = plan({"web": wanted}, have)["web"]
    assert action.action == "recreate"
    assert action.reason.startswith(
        f"rolling update of its tasks: its configuration changed (config hash {old[:12]} -> "
    )


def test_a_service_deployed_without_the_hash_is_compared_field_by_field() -> None:
    have = running(PROJECT, {"web": web()})
    del have[0]["Spec"]["Labels"][CONFIG_HASH_LABEL]
    same = plan({"web": web()}, have)["web"]
    assert same.action == "unchanged" and "deployed without the gateway's config hash" in same.reason
    changed = plan({"web": web(environment={"MODE": "live"})}, copy.deepcopy(have))["web"]
    assert (changed.action, changed.reason) == ("recreate", "rolling update of its tasks: environment -API_KEY")


def test_a_service_the_gateway_stopped_is_started_again() -> None:
    have = running(PROJECT, {"web": web()})
    spec = have[0]["Spec"]
    spec["Mode"] = {"Replicated": {"Replicas": 0}}
    spec["Labels"][STOPPED_REPLICAS_LABEL] = "2"
    action = plan({"web": web()}, have)["web"]
    assert (action.action, action.reason) == (
        "start",
        "it was stopped (scaled to 0); up scales it back: replicas 0 -> 2",
    )


def test_a_mode_change_says_up_cannot_do_it_in_place() -> None:
    action = plan({"web": web(deploy={"mode": "global"})}, running(PROJECT, {"web": web()}))["web"]
    assert action.action == "recreate" and "from replicated to global" in action.reason
    assert "down the stack first, then up" in action.reason


# -- on a real swarm -------------------------------------------------------------------------------

STACK = """
x-compose-agent:
  target: swarm
services:
  web:
    image: {image}
    init: true
    command: ["sh", "-c", "sleep 600"]
    environment:
      MODE: live
      TOKEN: first-secret
    deploy:
      replicas: 2
      placement: {max_replicas_per_node: 1}
      update_config: {parallelism: 2}
  old:
    image: {image}
    command: ["sleep", "600"]
"""


@pytest.fixture
def ops3(swarm3: Swarm, stacks: StackFactory) -> Iterator[ComposeOperations]:
    """The gateway's operations pointed at swarm3's manager over TLS, as DOCKER_* variables configure it."""
    environ = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), **swarm3.docker_env()}
    settings = load_settings(environ, stacks_dir=stacks.root)
    operations = ComposeOperations.from_settings(settings, plane=ControlPlane.COMPOSE_AGENT, environ=environ)
    yield operations
    operations.close()


@pytest.mark.anyio
async def test_plan_on_a_three_node_swarm_says_what_a_deploy_changes(
    ops3: ComposeOperations, stacks: StackFactory
) -> None:
    name = stacks.make(STACK)
    first = await ops3.planner.plan(name)
    assert {a.service: a.action for a in first.actions} == {"old": "create", "web": "create"}
    assert first.warnings == []

    await ops3.up(name, wait=True)
    # What a confirmation of restart shows: the tasks, with their nodes.
    described = await ops3.planner.describe(name, "restart", ["web"])
    assert described.startswith(f"What restart does to '{name}' (services web):")
    assert described.count(f"{name}_web.") == 2 and described.count("(running on compose-agent-swarm-") == 2
    # A confirmation token is bound to the stack's state: a rolling restart in between changes it.
    state = await ops3.planner.state(name)
    assert await ops3.planner.state(name) == state
    await ops3.service_action("restart", name, services=["web"])
    assert await ops3.planner.state(name) != state
    assert {a.service: a.action for a in (await ops3.planner.plan(name)).actions} == {
        "old": "unchanged",
        "web": "unchanged",
    }

    proposed = (
        STACK.replace("{image}", stacks.image)
        .replace("MODE: live", "MODE: maintenance")
        .replace("TOKEN: first-secret\n", "TOKEN: first-secret\n      EXTRA: '1'\n")
        .replace("replicas: 2", "replicas: 3")
        .replace("max_replicas_per_node: 1", "max_replicas_per_node: 2")
    )
    proposed = (
        proposed[: proposed.index("  old:")] + "  new:\n    image: " + stacks.image + "\n    command: [sleep, '600']\n"
    )
    plan = await ops3.planner.plan(name, compose_yaml=proposed)
    actions = {a.service: a for a in plan.actions}
    assert {s: a.action for s, a in actions.items()} == {"new": "create", "old": "remove", "web": "recreate"}, (
        plan.warnings,
        plan.policy,
    )
    assert actions["web"].reason == (
        "rolling update of its tasks: environment +EXTRA ~MODE; "
        "placement (no constraints, at most 1 per node) -> (no constraints, at most 2 per node); replicas 2 -> 3"
    )
    assert "secret" not in actions["web"].reason
    # Planning changed nothing.
    assert {a.service: a.action for a in (await ops3.planner.plan(name)).actions} == {
        "old": "unchanged",
        "web": "unchanged",
    }

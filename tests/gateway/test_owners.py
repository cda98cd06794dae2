"""Ownership by the engine's label (issue 20): the guard's hooks answered by the real engine, and a stack
that names another project's resource refused through ``up``; a lookup that fails stays with its stack."""

from __future__ import annotations

from collections.abc import Iterator

import docker
import pytest

from gateway.engine.client import Engine
from gateway.engine.containers import PROJECT_LABEL
from gateway.engine.owners import EngineOwners
from gateway.errors import EngineUnavailable, PolicyRefused
from gateway.operations import ComposeOperations
from tests.conftest import StackFactory, random_name
from tests.gateway.test_policy_engine import footprint

pytestmark = [pytest.mark.anyio, pytest.mark.docker]


@pytest.fixture
def engine() -> Iterator[Engine]:
    found = Engine()
    yield found
    found.close()


def test_the_engine_says_who_owns_a_resource_by_its_exact_name(
    engine: Engine, docker_client: docker.DockerClient
) -> None:
    owners = EngineOwners(engine)
    project = random_name("own")
    labelled = docker_client.volumes.create(f"{project}_data", labels={PROJECT_LABEL: project})
    bare = docker_client.volumes.create(f"{project}_bare")
    network = docker_client.networks.create(f"{project}_net", labels={PROJECT_LABEL: "someone-else"})
    try:
        assert owners.owner("volume", f"{project}_data") == project
        assert owners.owner("volume", f"{project}_bare") == ""  # made outside Compose
        assert owners.owner("volume", f"{project}_none") is None
        assert owners.owner("network", f"{project}_net") == "someone-else"
        # The engine finds a network by an id prefix too: that is not a network of this name.
        assert owners.owner("network", network.id[:12]) is None
        assert owners.owner("container", f"{project}-a-1") is None
        assert owners.owner("secret", f"{project}_token") is None  # no swarm here, or none of that name
        assert project in owners.projects()
        with pytest.raises(ValueError, match="unknown resource kind"):
            owners.owner("image", "x")
    finally:
        labelled.remove(force=True)
        bare.remove(force=True)
        network.remove()


async def test_up_refuses_a_volume_another_project_owns(
    ops: ComposeOperations, stacks: StackFactory, docker_client: docker.DockerClient
) -> None:
    name = stacks.make(
        "services:\n  a:\n    image: {image}\n    init: true\n    command: ['sleep', '3600']\n"
        "    volumes: [data:/d]\nvolumes:\n  data:\n"
    )
    # The volume the stack would make is there already, and the engine says whose it is.
    taken = docker_client.volumes.create(f"{name}_data", labels={PROJECT_LABEL: "othershop"})
    try:
        with pytest.raises(PolicyRefused) as refused:
            await ops.up(name)
        assert [v.rule for v in refused.value.violations] == ["external_volumes"]
        assert "belongs to project othershop" in str(refused.value)
        assert footprint(docker_client, name)["containers"] == []
    finally:
        taken.remove(force=True)
    # Once it is gone, the stack creates its own.
    await ops.up(name)
    assert docker_client.volumes.get(f"{name}_data").attrs["Labels"][PROJECT_LABEL] == name
    await ops.down(name, volumes=True)


async def test_a_stack_cannot_take_a_running_projects_namespace_by_its_key(
    ops: ComposeOperations, stacks: StackFactory, docker_client: docker.DockerClient
) -> None:
    name = stacks.make("services:\n  a:\n    image: {image}\n    volumes: [x_data:/d]\nvolumes:\n  x_data:\n")
    # A compose project called <stack>_x runs on the engine, with no folder in this stacks dir.
    running = docker_client.containers.create(stacks.image, ["sleep", "60"], labels={PROJECT_LABEL: f"{name}_x"})
    try:
        with pytest.raises(PolicyRefused) as refused:
            await ops.up(name)
    finally:
        running.remove(force=True)
    assert [v.rule for v in refused.value.violations] == ["external_volumes"]
    assert f"inside {name}_x's namespace" in str(refused.value)
    assert footprint(docker_client, name)["containers"] == []


async def test_an_engine_that_cannot_say_who_owns_a_resource_refuses_only_that_stack(
    ops: ComposeOperations, stacks: StackFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    fine = stacks.make("services:\n  a:\n    image: {image}\n    network_mode: none\n")
    named = stacks.make("services:\n  a:\n    image: {image}\n    volumes: [data:/d]\nvolumes:\n  data:\n")

    def unreachable(kind: str, resource: str) -> str | None:
        if resource.startswith(named):
            raise EngineUnavailable("the engine did not answer in time")
        return None

    monkeypatch.setattr(ops.catalog.guard, "owners", unreachable)
    listed = {entry.name: entry.policy for entry in (await ops.list_stacks()).stacks}
    ps = await ops.ps(named)
    assert ps.policy is not None and not ps.policy.allowed and "did not answer in time" in (ps.policy.error or "")
    assert (await ops.ps(fine)).policy is not None
    assert set(listed) >= {fine, named}
    with pytest.raises(PolicyRefused, match="could not judge this stack"):
        await ops.up(named)

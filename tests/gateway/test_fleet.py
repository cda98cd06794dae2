"""A fleet on real engines: one gateway, its own engine, a TLS engine and an SSH engine (tests/engines).

Every stack tool takes ``host``; the containers run on that host's engine and nowhere else; a
read-only host refuses writes; the guard judges remote stacks as local ones; the audit names the
host; a paused engine costs a listing its budget and a line, and comes back by itself.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import docker
import pytest
from mcp import Client
from mcp.types import CallToolResult, ResourceTemplateReference, TextContent

from gateway.audit import AuditLog
from gateway.config import load_settings
from gateway.fleet import Fleet
from gateway.mcp.health import Report, Vitals
from gateway.mcp.server import build_server
from gateway.metrics import ControlPlane
from gateway.operations import ComposeOperations
from tests.conftest import StackFactory, random_name
from tests.engines import Engine as DindEngine
from tests.polling import eventually

pytestmark = [pytest.mark.anyio, pytest.mark.docker, pytest.mark.dind]

PROJECT_LABEL = "com.docker.compose.project"
# No bind mount: a relative one would name a folder of the remote host (see docs/fleet.md).
TICKER = """
services:
  ticker:
    image: {image}
    init: true
    command: ["sh", "-c", "echo hello from $$HOSTNAME; while true; do sleep 0.5; done"]
"""
HOSTILE = "services:\n  a:\n    image: {image}\n    privileged: true\n"
LIST_BUDGET_S = 3.0
# The engines' own deadline: past it a call fails and the engine is degraded (calls then fail fast).
ENGINE_TIMEOUT_S = 5.0


@dataclass
class FleetSetup:
    """The gateway's fleet, the engines behind its hosts, and where each host's stacks live."""

    fleet: Fleet
    engines: dict[str, DindEngine]
    dirs: dict[str, Path]
    audit_path: Path
    image: str
    projects: list[tuple[str, str]]

    def make(self, host: str, compose_yaml: str = TICKER) -> str:
        """A stack folder for ``host`` (removed from its engine after the test)."""
        name = random_name("fl")
        folder = self.dirs[host] / name
        folder.mkdir(parents=True)
        (folder / "compose.yaml").write_text(compose_yaml.replace("{image}", self.image))
        self.projects.append((host, name))
        return name

    def containers(self, host: str, project: str) -> list[str]:
        """The project's container names on ``host``'s engine, asked of that engine's own CLI."""
        done = self.engines[host].docker(
            "ps", "-a", "--filter", f"label={PROJECT_LABEL}={project}", "--format", "{{.Names}}"
        )
        return done.stdout.split()

    def audit_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.audit_path.read_text().splitlines() if line.strip()]


def _sweep(engine: DindEngine, project: str) -> None:
    label = f"label={PROJECT_LABEL}={project}"
    for kind, listing in (("container", ("ps", "-aq")), ("network", ("network", "ls", "-q"))):
        ids = engine.docker(*listing, "--filter", label, check=False).stdout.split()
        if ids:
            remove = ("rm", "-f") if kind == "container" else ("network", "rm")
            engine.docker(*remove, *ids, check=False)


@pytest.fixture
def fleet_setup(
    tmp_path: Path,
    stacks: StackFactory,
    tls_engine: DindEngine,
    ssh_engine: DindEngine,
    busybox_image: str,
) -> Iterator[FleetSetup]:
    """local (this machine's engine), edge (TLS), lab (SSH) and vault (the SSH engine again, read-only)."""
    dirs = {"local": stacks.root}
    for name in ("edge", "lab", "vault"):
        dirs[name] = tmp_path / f"{name}-stacks"
        dirs[name].mkdir()
    hosts = {
        "edge": {
            "docker_host": tls_engine.tls_host,
            "tls_verify": True,
            "cert_path": str(tls_engine.tls_dir),
            "stacks_dir": str(dirs["edge"]),
        },
        "lab": {"docker_host": ssh_engine.ssh_host, "stacks_dir": str(dirs["lab"])},
        "vault": {"docker_host": ssh_engine.ssh_host, "stacks_dir": str(dirs["vault"]), "read_only": True},
    }
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"hosts": hosts}))
    audit_path = tmp_path / "audit.log"
    environ = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/root"),
        "CONFIG_PATH": str(config),
        "COMPOSE_AGENT_STATE_DIR": str(tmp_path / "state"),
    }
    settings = load_settings(environ, stacks_dir=stacks.root, docker_timeout=ENGINE_TIMEOUT_S)
    audit = AuditLog(audit_path)
    local = ComposeOperations.from_settings(settings, plane=ControlPlane.COMPOSE_AGENT, audit=audit, environ=environ)
    fleet = Fleet.from_settings(settings, local, plane=ControlPlane.COMPOSE_AGENT, audit=audit, environ=environ)
    fleet.list_budget = LIST_BUDGET_S
    engines = {"edge": tls_engine, "lab": ssh_engine, "vault": ssh_engine}
    setup = FleetSetup(fleet, engines, dirs, audit_path, busybox_image, [])
    try:
        yield setup
    finally:
        fleet.close()
        audit.close()
        for host, project in setup.projects:
            if host == "local":
                stacks.track(project)
            else:
                _sweep(engines[host], project)


@pytest.fixture
async def client(fleet_setup: FleetSetup) -> AsyncIterator[Client]:
    server = build_server(fleet_setup.fleet.local, fleet=fleet_setup.fleet)
    async with Client(server) as connected:
        yield connected


async def health_of(fleet: Fleet) -> Report:
    """What /health would say of a serving gateway with this fleet (the engine probe: a stand-in)."""
    vitals = Vitals(lambda: None, hosts=fleet.states)
    vitals.sessions_running = True
    return await vitals.report()


def text_of(result: CallToolResult) -> str:
    return "".join(part.text for part in result.content if isinstance(part, TextContent))


async def call(client: Client, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, text_of(result)
    content: dict[str, Any] | None = result.structured_content
    assert content is not None
    return content


@pytest.mark.parametrize("host", ["edge", "lab"])
async def test_a_remote_host_runs_its_stacks_on_its_own_engine_only(
    fleet_setup: FleetSetup, client: Client, host: str, docker_client: docker.DockerClient
) -> None:
    project = fleet_setup.make(host)
    on = {"project": project, "host": host}

    up = await call(client, "up", {**on, "wait": True})
    assert (up["host"], up["ok"]) == (host, True)
    (container,) = fleet_setup.containers(host, project)
    # Not on this machine's engine: the host's engine alone runs it.
    assert docker_client.containers.list(all=True, filters={"label": f"{PROJECT_LABEL}={project}"}) == []

    ps = await call(client, "ps", on)
    assert ps["host"] == host
    assert [(s["service"], s["container"], s["state"]) for s in ps["services"]] == [("ticker", container, "running")]
    assert ps["policy"]["allowed"] is True

    async def said_hello() -> dict[str, Any] | None:
        logs = await call(client, "logs", on)
        return logs if "hello from" in logs["text"] else None

    greeted = await eventually(said_hello, what=f"the ticker's greeting in the logs from {host}")
    assert greeted is not None and greeted["host"] == host

    listing = await call(client, "list_stacks", {})
    assert {h["name"]: h["state"] for h in listing["hosts"]} == {
        "local": "up",
        "edge": "up",
        "lab": "up",
        "vault": "up",
    }
    # (vault is the SSH engine again: there the project is an external one, as any project without a folder.)
    (row,) = [s for s in listing["stacks"] if s["name"] == project and s["host"] == host]
    assert (row["running"], row["external"]) == (1, False)

    started = fleet_setup.engines[host].docker("inspect", "-f", "{{.State.StartedAt}}", container).stdout
    restart = await call(client, "restart", on)
    assert (restart["host"], restart["ok"]) == (host, True)
    assert fleet_setup.engines[host].docker("inspect", "-f", "{{.State.StartedAt}}", container).stdout != started

    down = await call(client, "down", on)
    assert (down["host"], down["ok"]) == (host, True)
    assert fleet_setup.containers(host, project) == []

    # Every line of these calls names the host: intents, outcomes.
    lines = [line for line in fleet_setup.audit_lines() if line.get("arguments", {}).get("project") == project]
    assert {line["tool"] for line in lines} == {"up", "restart", "down"}
    assert all(line["host"] == host for line in lines)
    assert {line["outcome"] for line in lines if line["phase"] == "outcome"} == {"ok"}


async def test_the_same_stack_name_on_two_hosts_is_two_stacks(fleet_setup: FleetSetup, client: Client) -> None:
    project = fleet_setup.make("lab")
    (fleet_setup.dirs["local"] / project).mkdir()
    (fleet_setup.dirs["local"] / project / "compose.yaml").write_text(TICKER.replace("{image}", fleet_setup.image))
    fleet_setup.projects.append(("local", project))
    await call(client, "up", {"project": project, "host": "lab"})

    listing = await call(client, "list_stacks", {})
    rows = sorted((s["host"], s["running"], s["external"]) for s in listing["stacks"] if s["name"] == project)
    # vault shares lab's engine and has no folder of that name: it sees the project as external.
    assert rows == [("lab", 1, False), ("local", 0, False), ("vault", 1, True)]
    only_lab = await call(client, "list_stacks", {"host": "lab"})
    assert [h["name"] for h in only_lab["hosts"]] == ["lab"] and {s["host"] for s in only_lab["stacks"]} == {"lab"}
    assert project in {s["name"] for s in only_lab["stacks"]}
    local_ps = await call(client, "ps", {"project": project})
    assert local_ps["host"] == "local" and [s["state"] for s in local_ps["services"]] == ["missing"]


async def test_a_read_only_host_refuses_every_write_and_says_which(fleet_setup: FleetSetup, client: Client) -> None:
    project = fleet_setup.make("vault")
    for tool in ("up", "down", "restart", "stop", "start"):
        result = await client.call_tool(tool, {"project": project, "host": "vault"})
        assert result.is_error
        assert "host 'vault' is read-only" in text_of(result), text_of(result)
    deploy = await client.call_tool(
        "deploy", {"project": project, "host": "vault", "compose_yaml": TICKER.replace("{image}", fleet_setup.image)}
    )
    assert deploy.is_error and "read-only" in text_of(deploy)
    assert fleet_setup.containers("vault", project) == []
    # Reads still work there.
    ps = await call(client, "ps", {"project": project, "host": "vault"})
    assert ps["host"] == "vault" and [s["state"] for s in ps["services"]] == ["missing"]
    refusals = [line for line in fleet_setup.audit_lines() if line.get("outcome") == "refused"]
    assert {line["tool"] for line in refusals} == {"up", "down", "restart", "stop", "start", "deploy"}
    assert all(line["host"] == "vault" and "read-only" in line["error"] for line in refusals)


async def test_the_guard_refuses_a_hostile_stack_on_a_remote_host(fleet_setup: FleetSetup, client: Client) -> None:
    project = fleet_setup.make("edge", HOSTILE)
    result = await client.call_tool("up", {"project": project, "host": "edge"})
    assert result.is_error and "privileged" in text_of(result), text_of(result)
    assert fleet_setup.containers("edge", project) == []
    listing = await call(client, "list_stacks", {})
    (row,) = [s for s in listing["stacks"] if s["name"] == project]
    assert row["host"] == "edge" and row["policy"]["allowed"] is False and row["policy"]["rules"] == ["privileged"]
    lines = [line for line in fleet_setup.audit_lines() if line.get("arguments", {}).get("project") == project]
    assert lines and all(line["host"] == "edge" for line in lines)
    assert "refused" in {line.get("outcome") for line in lines}, lines


async def test_an_unknown_host_is_refused_naming_the_known_ones(fleet_setup: FleetSetup, client: Client) -> None:
    result = await client.call_tool("ps", {"project": "shop", "host": "nowhere"})
    assert result.is_error
    assert "no host named 'nowhere'; known hosts: local, edge, lab, vault" in text_of(result)
    bad = await client.call_tool("ps", {"project": "shop", "host": "../etc"})
    assert bad.is_error and "'host'" in text_of(bad)


async def test_a_paused_engine_degrades_the_listing_within_its_budget_and_recovers(
    fleet_setup: FleetSetup, client: Client, tls_engine: DindEngine
) -> None:
    lab = fleet_setup.make("lab")
    await call(client, "up", {"project": lab, "host": "lab"})
    edge = fleet_setup.make("edge")
    await call(client, "up", {"project": edge, "host": "edge"})

    with tls_engine.paused_for():
        began = time.perf_counter()
        listing = await call(client, "list_stacks", {})
        assert time.perf_counter() - began < LIST_BUDGET_S + 1.5
        states = {h["name"]: h for h in listing["hosts"]}
        assert states["edge"]["state"] in ("degraded", "timeout") and states["edge"]["error"]
        assert {states[name]["state"] for name in ("local", "lab", "vault")} == {"up"}
        names = {(s["host"], s["name"]) for s in listing["stacks"]}
        assert ("lab", lab) in names and not any(host == "edge" for host, _ in names)
        # A call to the host fails within the engine's deadline, naming it; the engine is degraded then.
        began = time.perf_counter()
        ps = await client.call_tool("ps", {"project": edge, "host": "edge"})
        assert ps.is_error and "'edge'" in text_of(ps), text_of(ps)
        assert time.perf_counter() - began < ENGINE_TIMEOUT_S + 2
        # And the next listing does not wait for it: the degraded engine fails at once.
        began = time.perf_counter()
        listing = await call(client, "list_stacks", {})
        assert time.perf_counter() - began < LIST_BUDGET_S
        states = {h["name"]: h for h in listing["hosts"]}
        assert states["edge"]["state"] == "degraded" and "'edge'" in states["edge"]["error"]
        assert ("lab", lab) in {(s["host"], s["name"]) for s in listing["stacks"]}
        # /health says so, and still serves: one host down is a degraded gateway, not a failing one.
        health = await health_of(fleet_setup.fleet)
        assert health.status_code == 200 and health.body["hosts"]["edge"]["status"] == "degraded"
        assert health.body["hosts"]["lab"]["status"] == "up"
        assert any(reason.startswith("host edge is degraded") for reason in health.body["reasons"])

    async def edge_back() -> bool:
        listing = await call(client, "list_stacks", {})
        return {h["name"]: h["state"] for h in listing["hosts"]}["edge"] == "up" and any(
            s["name"] == edge and s["host"] == "edge" for s in listing["stacks"]
        )

    await eventually(edge_back, timeout=60, interval=0.5, what="the edge host listed again after unpause")
    with anyio.fail_after(30):
        ps_ok = await call(client, "ps", {"project": edge, "host": "edge"})
    assert [s["state"] for s in ps_ok["services"]] == ["running"]
    assert (await health_of(fleet_setup.fleet)).body["hosts"]["edge"]["status"] == "up"


async def test_resources_and_completion_know_the_hosts(fleet_setup: FleetSetup, client: Client) -> None:
    project = fleet_setup.make("edge")
    local = fleet_setup.make("local")
    listed = {str(r.uri) for r in (await client.list_resources()).resources}
    # Local stacks keep their URIs; another host's stack has its host in the path.
    assert {f"compose://stacks/{local}/status", f"compose://stacks/{local}/compose.yaml"} <= listed
    assert {f"compose://stacks/edge/{project}/status", f"compose://stacks/edge/{project}/compose.yaml"} <= listed
    assert f"compose://stacks/{project}/status" not in listed

    status = await client.read_resource(f"compose://stacks/edge/{project}/status")
    body = json.loads(status.contents[0].text)  # type: ignore[union-attr]
    assert (body["host"], body["project"], [s["state"] for s in body["services"]]) == ("edge", project, ["missing"])
    compose_file = await client.read_resource(f"compose://stacks/edge/{project}/compose.yaml")
    assert "ticker:" in compose_file.contents[0].text  # type: ignore[union-attr]
    with pytest.raises(Exception, match="known hosts: local, edge, lab, vault"):
        await client.read_resource(f"compose://stacks/nowhere/{project}/status")

    templates = {t.uri_template for t in (await client.list_resource_templates()).resource_templates}
    assert {"compose://stacks/{host}/{project}/status", "compose://stacks/{project}/status"} <= templates
    ref = ResourceTemplateReference(type="ref/resource", uri="compose://stacks/{host}/{project}/status")
    hosts = (await client.complete(ref, {"name": "host", "value": ""})).completion
    assert hosts.values == ["edge", "lab", "vault"]
    projects = (await client.complete(ref, {"name": "project", "value": project[:6]}, {"host": "edge"})).completion
    assert project in projects.values and local not in projects.values
    services = await client.complete(ref, {"name": "service", "value": ""}, {"host": "edge", "project": project})
    assert services.completion.values == ["ticker"]  # from that host's stack's compose model


def test_a_remote_resource_is_read_under_its_hosts_stack_scope() -> None:
    from gateway.auth.principals import Principal
    from gateway.auth.scopes import ScopeSet
    from gateway.errors import PolicyViolation
    from gateway.mcp.access import require_scope

    refused: list[str] = []

    class Ops:
        def audit_refusal(self, tool: str, arguments: dict[str, Any], caller: str, reason: str, **_: Any) -> None:
            refused.append(reason)

    edge_site = ScopeSet.parse(["compose:read:edge/site"])
    person = Principal("oauth:c", edge_site.tools(), person="ann", scopes=edge_site)
    require_scope(Ops(), person, "ps", "resources/read", {"uri": "compose://stacks/edge/site/status"})  # type: ignore[arg-type]
    for uri in ("compose://stacks/site/status", "compose://stacks/lab/site/status", "compose://stacks/edge/x/logs"):
        with pytest.raises(PolicyViolation):
            require_scope(Ops(), person, "ps", "resources/read", {"uri": uri})  # type: ignore[arg-type]
    assert len(refused) == 3


async def test_a_confirmation_is_bound_to_its_host(fleet_setup: FleetSetup) -> None:
    from gateway.errors import CONFIRM_META_KEY

    project = fleet_setup.make("lab")
    (fleet_setup.dirs["local"] / project).mkdir()
    (fleet_setup.dirs["local"] / project / "compose.yaml").write_text(TICKER.replace("{image}", fleet_setup.image))
    fleet_setup.projects.append(("local", project))
    server = build_server(fleet_setup.fleet.local, fleet=fleet_setup.fleet, confirm=["down"])
    async with Client(server) as client:
        asked = await client.call_tool("down", {"project": project})
        assert asked.is_error and asked.meta is not None
        token = asked.meta[CONFIRM_META_KEY]
        # The token of the local stack does not bring down its namesake on lab.
        elsewhere = await client.call_tool("down", {"project": project, "host": "lab", "confirm": token})
        assert elsewhere.is_error and CONFIRM_META_KEY not in (elsewhere.meta or {}), text_of(elsewhere)
        assert "nothing was changed" in text_of(elsewhere)
        # (A token that did not fit is spent.) A new one acts on the stack it was given for.
        again = await client.call_tool("down", {"project": project})
        assert again.meta is not None
        here = await client.call_tool("down", {"project": project, "confirm": again.meta[CONFIRM_META_KEY]})
        assert not here.is_error, text_of(here)


def test_an_idempotency_key_is_bound_to_the_host() -> None:
    from gateway.idempotency import fingerprint

    local = fingerprint("up", {"project": "site"})
    assert fingerprint("up", {"project": "site", "host": "local"}) == local
    assert fingerprint("up", {"project": "site", "host": "edge"}) != local


async def test_deploy_plan_and_versions_work_on_a_remote_host(fleet_setup: FleetSetup, client: Client) -> None:
    project = random_name("fd")
    fleet_setup.projects.append(("lab", project))
    compose_yaml = TICKER.replace("{image}", fleet_setup.image)
    on = {"project": project, "host": "lab"}
    plan = await call(client, "plan", {**on, "compose_yaml": compose_yaml})
    assert [(a["service"], a["action"]) for a in plan["actions"]] == [("ticker", "create")]
    deployed = await call(client, "deploy", {**on, "compose_yaml": compose_yaml})
    assert (deployed["host"], deployed["version"], deployed["created"]) == ("lab", 1, True)
    # The folder is the lab host's, on this machine; the container is on the lab engine.
    assert (fleet_setup.dirs["lab"] / project / "compose.yaml").is_file()
    assert not (fleet_setup.dirs["local"] / project).exists()
    assert len(fleet_setup.containers("lab", project)) == 1
    versions = await call(client, "versions", on)
    assert [v["version"] for v in versions["versions"]] == [1]
    local_versions = await client.call_tool("versions", {"project": project})
    assert local_versions.is_error  # no such stack on the local host
    down = await call(client, "down", on)
    assert down["ok"] and fleet_setup.containers("lab", project) == []


async def test_an_approval_is_bound_to_its_host(
    fleet_setup: FleetSetup, tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    from gateway.approvals.records import Approver
    from gateway.approvals.store import ApprovalStore
    from gateway.auth.principals import oauth_caller
    from gateway.mcp.approvals import ApprovalGate
    from gateway.policy.rules import Policy
    from tests.gateway.approvals_fixtures import PANEL_URL, approval_of, kind

    project = fleet_setup.make("lab")
    (fleet_setup.dirs["local"] / project).mkdir()
    (fleet_setup.dirs["local"] / project / "compose.yaml").write_text(TICKER.replace("{image}", fleet_setup.image))
    fleet_setup.projects.append(("local", project))
    approvals = ApprovalGate(ApprovalStore(tmp_path / "approvals.json"), Policy(approve=("up",)), panel_url=PANEL_URL)
    server = build_server(fleet_setup.fleet.local, fleet=fleet_setup.fleet, approvals=approvals)
    async with Client(server) as client:
        approval = approval_of(await client.call_tool("up", {"project": project, "host": "lab"}))
        approvals.store.decide(approval, approve=True, by=Approver("bob", oauth_caller("client-b")))
        # Approved for lab, it does not bring up the local namesake.
        replayed = await client.call_tool("up", {"project": project, "approval": approval})
        assert kind(replayed) == "policy_violation" and "was asked for another call" in text_of(replayed)
        done = await call(client, "up", {"project": project, "host": "lab", "approval": approval})
    assert (done["host"], done["ok"]) == ("lab", True)
    assert len(fleet_setup.containers("lab", project)) == 1
    assert docker_client.containers.list(all=True, filters={"label": f"{PROJECT_LABEL}={project}"}) == []
    kept = json.loads((tmp_path / "approvals.json").read_text())["approvals"][approval]
    assert kept["host"] == "lab" and kept["arguments"]["host"] == "lab"

"""The remote engines themselves: reachable the way every Docker tool reaches an engine, and gone afterwards.

These are the guarantees the fleet and swarm tests build on: the docker CLI and Compose work from this
machine through ``DOCKER_HOST``/``DOCKER_TLS_VERIFY``/``DOCKER_CERT_PATH`` and ``ssh://``; what runs
there does not run here; a paused engine stops answering; and nothing outlives an engine.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from tests.conftest import random_name
from tests.engines import Engine, EngineError, Swarm, Via, start_engine
from tests.engines import image as image_recipe
from tests.engines.fixtures import EngineFactory
from tests.engines.leftovers import sweep
from tests.engines.ssh import SSH_CONFIG_DIR, config_path
from tests.polling import wait_for

# Marked explicitly too: some tests here start engines in a child process, without the fixtures.
pytestmark = [pytest.mark.dind, pytest.mark.docker]

REPO = Path(__file__).resolve().parents[2]

COMPOSE_FILE = """
services:
  app:
    image: {image}
    init: true
    command: ["sleep", "300"]
"""


def _local(*args: str) -> subprocess.CompletedProcess[str]:
    """The docker CLI against this machine's own engine."""
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=60, check=False)


def _left_of(engine_name: str, workdir: Path) -> list[str]:
    """What exists of an engine: its container, volume, folder of keys and ssh config (nothing, once removed)."""
    left = []
    if _local("container", "inspect", engine_name).returncode == 0:
        left.append(f"container {engine_name}")
    if _local("volume", "inspect", f"{engine_name}-docker").returncode == 0:
        left.append(f"volume {engine_name}-docker")
    if workdir.exists():
        left.append(f"folder {workdir}")
    if config_path(engine_name).exists():
        left.append(f"ssh config {config_path(engine_name)}")
    return left


def test_the_docker_cli_reaches_the_tls_engine_through_the_standard_variables(tls_engine: Engine) -> None:
    env = tls_engine.docker_env()
    assert env == {
        "DOCKER_HOST": f"tcp://{tls_engine.ip}:2376",
        "DOCKER_TLS_VERIFY": "1",
        "DOCKER_CERT_PATH": str(tls_engine.tls_dir),
    }
    assert sorted(p.name for p in tls_engine.tls_dir.iterdir()) == ["ca.pem", "cert.pem", "key.pem"]
    assert (tls_engine.tls_dir / "key.pem").stat().st_mode & 0o777 == 0o600
    # The engine's own name: this is that engine, not the local one.
    assert tls_engine.cli("info", "--format", "{{.Name}}").stdout.strip() == tls_engine.name


def test_the_tls_engine_refuses_a_client_without_its_certificate(tls_engine: Engine) -> None:
    host = ["-H", tls_engine.tls_host]
    no_cert = _local("--tlsverify", "--tlscacert", str(tls_engine.tls_dir / "ca.pem"), *host, "version")
    plain = _local(*host, "version")
    assert no_cert.returncode != 0 and "certificate" in no_cert.stderr.lower()
    assert plain.returncode != 0


def test_the_docker_cli_reaches_the_ssh_engine_over_a_multiplexed_connection(ssh_engine: Engine) -> None:
    assert ssh_engine.docker_env() == {"DOCKER_HOST": f"ssh://root@{ssh_engine.ip}"}
    assert ssh_engine.cli("info", "--format", "{{.Name}}").stdout.strip() == ssh_engine.name
    # Any process here finds the engine's key, known host and master connection by its address alone.
    check = subprocess.run(["ssh", "-O", "check", ssh_engine.ip], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0 and "Master running" in check.stderr
    assert subprocess.run(["ssh", ssh_engine.ip, "hostname"], capture_output=True, text=True, timeout=30).stdout == (
        f"{ssh_engine.name}\n"
    )


def test_ssh_refuses_the_engine_when_its_host_key_is_not_the_one_it_printed(ssh_engine: Engine, tmp_path: Path) -> None:
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    known = tmp_path / "known_hosts"
    known.write_text(f"{ssh_engine.ip} {' '.join(other.with_suffix('.pub').read_text().split()[:2])}\n")
    refused = subprocess.run(
        ["ssh", "-o", f"UserKnownHostsFile={known}", "-o", "ControlPath=none", ssh_engine.ip, "true"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert refused.returncode != 0 and "REMOTE HOST IDENTIFICATION HAS CHANGED" in refused.stderr


@pytest.mark.parametrize("via", ["tls", "ssh"])
def test_compose_up_ps_down_run_on_the_remote_engine_and_not_here(
    via: Via, tls_engine: Engine, ssh_engine: Engine, busybox_image: str, tmp_path: Path
) -> None:
    engine = tls_engine if via == "tls" else ssh_engine
    project = random_name("dind")
    (tmp_path / "compose.yaml").write_text(COMPOSE_FILE.replace("{image}", busybox_image))
    compose = ["docker", "compose", "-p", project, "-f", str(tmp_path / "compose.yaml")]
    label = f"label=com.docker.compose.project={project}"

    def run_compose(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*compose, *args], env=engine.environ(via), capture_output=True, text=True, timeout=120, check=True
        )

    try:
        run_compose("up", "--detach", "--wait")
        rows = [json.loads(line) for line in run_compose("ps", "--format", "json").stdout.splitlines()]
        assert [(row["Service"], row["State"]) for row in rows] == [("app", "running")]
        assert engine.docker("ps", "-q", "--filter", label).stdout.split() != []
        assert _local("ps", "-aq", "--filter", label).stdout.split() == []
        run_compose("down", "--timeout", "2")
        assert engine.docker("ps", "-aq", "--filter", label).stdout.split() == []
    finally:
        subprocess.run([*compose, "down", "--timeout", "0"], env=engine.environ(via), capture_output=True, check=False)


def test_an_image_loaded_into_an_engine_runs_there_and_not_here(tls_engine: Engine, busybox_image: str) -> None:
    tag = f"compose-agent-test-load:{random_name()}"
    name = random_name("loaded")
    subprocess.run(["docker", "tag", busybox_image, tag], check=True)
    try:
        # The engine starts without it and cannot pull it: there is no registry.
        assert tls_engine.docker("image", "inspect", tag, check=False).returncode != 0
        tls_engine.load_image(tag)
        tls_engine.cli("run", "-d", "--init", "--name", name, tag, "sleep", "300")
        assert tls_engine.docker("ps", "--filter", f"name=^{name}$", "--format", "{{.Image}}").stdout.split() == [tag]
        assert _local("ps", "-aq", "--filter", f"name=^{name}$").stdout.strip() == ""
    finally:
        tls_engine.docker("rm", "-f", name, check=False)
        tls_engine.docker("rmi", tag, check=False)
        subprocess.run(["docker", "rmi", tag], capture_output=True, check=False)


def test_a_paused_engine_stops_answering_and_answers_again_after_unpause(tls_engine: Engine) -> None:
    assert tls_engine.ping()
    with tls_engine.paused_for():
        assert tls_engine.paused
        assert not tls_engine.ping(timeout=1.0)
    assert not tls_engine.paused
    wait_for(tls_engine.ping, timeout=30, what=f"{tls_engine.name} answers again after unpause")


def _tasks(swarm: Swarm, service: str) -> list[tuple[str, str]]:
    """(node, state) of the service's tasks that should run, with state like ``Running`` or ``Pending``."""
    listing = swarm.manager.cli(
        "service", "ps", service, "--filter", "desired-state=running", "--format", "{{.Node}}\t{{.CurrentState}}"
    ).stdout
    return [(node, state.split()[0]) for node, state in (line.split("\t") for line in listing.splitlines())]


def _spread_service(swarm: Swarm, image: str) -> str:
    service = random_name("spread")
    swarm.manager.cli(
        "service", "create", "--detach", "--no-resolve-image", "--init", "--name", service,
        "--replicas", "3", "--replicas-max-per-node", "1", image, "sleep", "600",
    )  # fmt: skip
    return service


def test_the_swarm_has_three_ready_nodes_and_spreads_a_service_across_them(swarm3: Swarm, busybox_image: str) -> None:
    nodes = swarm3.nodes()
    assert sorted(node.hostname for node in nodes) == sorted(engine.name for engine in swarm3.engines)
    assert {(node.status, node.availability) for node in nodes} == {("Ready", "Active")}
    assert [node.hostname for node in nodes if node.manager] == [swarm3.manager.name]
    service = _spread_service(swarm3, busybox_image)
    every_node = sorted((engine.name, "Running") for engine in swarm3.engines)
    wait_for(lambda: sorted(_tasks(swarm3, service)) == every_node, timeout=60, what="a running task on every node")


def test_a_drained_node_gives_up_its_task_and_takes_one_again_when_active(swarm3: Swarm, busybox_image: str) -> None:
    worker = swarm3.workers[0]
    service = _spread_service(swarm3, busybox_image)
    wait_for(lambda: [s for _, s in _tasks(swarm3, service)] == ["Running"] * 3, timeout=60, what="three running")
    swarm3.drain(worker)
    # One task per node at most, and two nodes left: the third waits, and not on the drained node.
    expected = sorted([("", "Pending"), *((e.name, "Running") for e in swarm3.engines if e is not worker)])
    wait_for(
        lambda: sorted(_tasks(swarm3, service)) == expected, timeout=60, what=f"the task on {worker.name} moved off"
    )
    swarm3.activate(worker)
    wait_for(
        lambda: (worker.name, "Running") in _tasks(swarm3, service), timeout=60, what=f"a task back on {worker.name}"
    )


def test_removing_an_engine_leaves_nothing_behind(engine_factory: EngineFactory) -> None:
    engine = engine_factory.start(tls=True, ssh=True)
    engine.cli("version", via="ssh")
    master = subprocess.run(["ssh", "-O", "check", engine.ip], capture_output=True, text=True, timeout=30).stderr
    match = re.search(r"pid=(\d+)", master)
    assert match, master
    assert len(_left_of(engine.name, engine.workdir)) == 4
    engine.remove()
    assert _left_of(engine.name, engine.workdir) == []
    wait_for(lambda: not Path(f"/proc/{match[1]}").exists(), timeout=20, what="the ssh master connection exits")
    engine.remove()  # twice is harmless


def test_an_engine_on_a_network_of_its_own_answers_over_tls_by_its_name(
    engine_factory: EngineFactory, engine_image: str
) -> None:
    network = engine_factory.network()
    engine = engine_factory.start(tls=True, network=network)
    # A client in a container on that network, as a containerised gateway would be: the name is in the certificate.
    client = subprocess.run(
        ["docker", "run", "--rm", "--network", network, "-v", f"{engine.tls_dir}:/certs:ro",
         "-e", f"DOCKER_HOST=tcp://{engine.name}:2376", "-e", "DOCKER_TLS_VERIFY=1", "-e", "DOCKER_CERT_PATH=/certs",
         engine_image, "docker", "info", "--format", "{{.Name}}"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert client.returncode == 0, client.stderr
    assert client.stdout.strip() == engine.name


INNER_TEST = """
import json, pathlib

def test_fails_while_holding_engines(tls_engine, ssh_engine, swarm3):
    engines = [tls_engine, ssh_engine, *swarm3.engines]
    pathlib.Path({out!r}).write_text(json.dumps([[e.name, str(e.workdir)] for e in engines]))
    assert False, "this test fails on purpose"
"""


def test_a_failing_test_still_has_its_engines_removed_at_the_end_of_its_session(tmp_path: Path) -> None:
    out = tmp_path / "engines.json"
    inner = tmp_path / "test_inner.py"
    inner.write_text(textwrap.dedent(INNER_TEST.format(out=str(out))))
    session = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-c", str(REPO / "pyproject.toml"),
         "-p", "no:cacheprovider", "-q", str(inner)],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert session.returncode == 1 and "1 failed" in session.stdout, session.stdout[-3000:] + session.stderr[-2000:]
    engines = json.loads(out.read_text())
    assert len(engines) == 5
    for name, workdir in engines:
        assert _left_of(name, Path(workdir)) == []


DYING_RUN = """
import os
from tests.engines import ensure_engine_image, start_engine
engine = start_engine(ensure_engine_image(), tls=True, ssh=True)
print(engine.name, engine.workdir, flush=True)
os._exit(0)  # dies without removing it, as a killed test run would
"""


def test_engines_of_a_run_that_died_are_swept_away(engine_image: str) -> None:
    dying = subprocess.run(
        [sys.executable, "-c", DYING_RUN], cwd=REPO, capture_output=True, text=True, timeout=300, check=True
    )
    name, workdir = dying.stdout.split()
    assert len(_left_of(name, Path(workdir))) == 4
    assert name in sweep()
    assert _left_of(name, Path(workdir)) == []


def test_a_start_that_fails_leaves_nothing_behind() -> None:
    prefix = random_name("failing-engine")
    with pytest.raises(EngineError, match="starting engine container"):
        start_engine("compose-agent-no-such-image:none", tls=True, ssh=True, prefix=prefix)
    assert _local("volume", "ls", "-q", "--filter", f"name={prefix}").stdout.strip() == ""
    assert list(Path(tempfile.gettempdir()).glob(f"{prefix}-*")) == []
    assert list(SSH_CONFIG_DIR.glob(f"*{prefix}*")) == []


def test_the_image_tag_follows_the_recipe(monkeypatch: pytest.MonkeyPatch, engine_image: str) -> None:
    assert image_recipe.engine_image_tag() == engine_image
    monkeypatch.setattr(image_recipe, "PACKAGES", (*image_recipe.PACKAGES, "curl"))
    changed = image_recipe.engine_image_tag()
    assert changed != engine_image and changed.startswith(f"{image_recipe.IMAGE_REPO}:r")


def test_an_engine_without_tls_or_ssh_says_how_to_reach_it(tls_engine: Engine) -> None:
    with pytest.raises(EngineError, match="without SSH"):
        tls_engine.docker_env("ssh")

"""The gateway's image as desktop clients run it: over stdio through the README's `docker run -i` line and the bundle.

The image is the deployment's own (``deploy_images`` builds it once per session from this tree). Every
session ends in the SDK's client listing the stacks, which the gateway reads through the socket's group
as its unprivileged user, and running the Compose CLI inside the image; the containers go with it (--rm).
"""

from __future__ import annotations

import grp
import json
import os
import re
import shlex
import stat
import subprocess
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from mcp import Client, StdioServerParameters

from tests.conftest import random_name
from tests.deploy.conftest import IMAGE_TAG, deploy_images
from tests.distribution.conftest import DOCKER_SOCKET, REPO, Stacks, mcpb_launch, run
from tests.distribution.readme_configs import StdioLaunch, readme_configs, substitute
from tests.distribution.sessions import over_stdio
from tests.gateway.swarm_fixtures import TWO_REPLICAS, remove_stack, swarm
from tests.polling import wait_for

__all__ = ["deploy_images", "swarm"]  # fixtures, imported for pytest

pytestmark = [pytest.mark.docker, pytest.mark.e2e]

# The tag docker-compose.yml gives the gateway's image, which deploy_images builds.
IMAGE = f"compose-agent:{IMAGE_TAG}"
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
SERVER = json.loads((REPO / "server.json").read_text())
PUBLISHED_IMAGE = next(p["identifier"] for p in SERVER["packages"] if p["registryType"] == "oci")
# The client's environment: what a desktop application hands a command it starts.
CLIENT_ENV = {k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "DOCKER_HOST", "LANG"}}


def socket_gid() -> int:
    return os.stat(DOCKER_SOCKET).st_gid


def docker_line(stacks: Path) -> StdioLaunch:
    """The README's `docker run -i` configuration, for this image, this stacks folder and this socket."""
    launch = substitute(
        readme_configs()["claude-desktop-docker"],
        {"<socket gid>": str(socket_gid()), "/opt/stacks": str(stacks), PUBLISHED_IMAGE: IMAGE},
    )
    assert isinstance(launch, StdioLaunch)
    return launch


def containers_mounting(folder: Path) -> list[str]:
    out = run(["docker", "ps", "-aq", "--filter", f"volume={folder}"])
    return out.split()


def test_the_image_names_its_server_and_runs_as_an_unprivileged_user(deploy_images: str) -> None:
    labels = json.loads(run(["docker", "image", "inspect", "-f", "{{json .Config.Labels}}", IMAGE]))
    assert labels["io.modelcontextprotocol.server.name"] == SERVER["name"]
    assert labels["org.opencontainers.image.version"] == VERSION
    assert run(["docker", "image", "inspect", "-f", "{{.Config.User}}", IMAGE]).strip() == "app"
    assert run(["docker", "run", "--rm", "--entrypoint", "id", IMAGE, "-u"]).strip() != "0"
    assert run(["docker", "run", "--rm", IMAGE, "--version"]).strip() == f"compose-agent {VERSION}"


def test_its_docker_cli_can_deploy_stacks_and_talks_to_the_engine_as_the_unprivileged_user(
    deploy_images: str, docker_client: object
) -> None:
    stack_help = run(["docker", "run", "--rm", "--entrypoint", "docker", IMAGE, "stack", "deploy", "--help"])
    assert "--compose-file" in stack_help and "--prune" in stack_help and "--detach" in stack_help
    versions = run(
        [
            "docker",
            "run",
            "--rm",
            "--group-add",
            str(socket_gid()),
            "-v",
            f"{DOCKER_SOCKET}:{DOCKER_SOCKET}",
            "--entrypoint",
            "docker",
            IMAGE,
            "version",
            "--format",
            "{{json .}}",
        ]
    )
    seen = json.loads(versions)
    assert seen["Client"]["Version"].startswith("26.1.5")
    assert seen["Server"]["Version"] == docker_client.version()["Version"]  # type: ignore[attr-defined]


def test_the_readme_shell_line_is_the_json_configuration(deploy_images: str) -> None:
    readme = (REPO / "README.md").read_text()
    (line,) = re.findall(r"The same line in a shell: `(docker run -i [^`]+)`", readme)
    words = shlex.split(line.replace("$(stat -c %g /var/run/docker.sock)", "<socket gid>"))
    launch = readme_configs()["claude-desktop-docker"]
    assert isinstance(launch, StdioLaunch)
    assert words == [launch.command, *launch.args]


@pytest.mark.anyio
async def test_the_readme_docker_run_line_serves_a_session_and_leaves_no_container(
    deploy_images: str, stacks_world: Stacks
) -> None:
    seen = await over_stdio(docker_line(stacks_world.root), stacks_world, CLIENT_ENV)
    seen.assert_served(stacks_world)
    wait_for(lambda: not containers_mounting(stacks_world.root), timeout=30, what="the stdio container is removed")


@pytest.fixture
def swarm_stack(swarm: str, busybox_image: str, tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A stacks folder holding one swarm stack of two replicas; the stack is removed from the swarm afterwards."""
    root = tmp_path / "stacks"
    name = random_name("sw")
    (root / name).mkdir(parents=True)
    (root / name / "compose.yaml").write_text(TWO_REPLICAS.replace("{image}", busybox_image))
    for path in (tmp_path, root, root / name):
        path.chmod(0o755)
    (root / name / "compose.yaml").chmod(0o644)
    try:
        yield root, name
    finally:
        remove_stack(name)


@pytest.mark.anyio
async def test_the_containerised_gateway_deploys_inspects_and_removes_a_swarm_stack(
    deploy_images: str, swarm_stack: tuple[Path, str]
) -> None:
    root, name = swarm_stack
    launch = docker_line(root)
    async with Client(StdioServerParameters(command=launch.command, args=launch.args, env=CLIENT_ENV)) as client:
        listed = await client.call_tool("list_stacks", {})
        assert {s["name"]: s["target"] for s in listed.structured_content["stacks"]}[name] == "swarm"
        up = await client.call_tool("up", {"project": name, "wait": True})
        assert not up.is_error, up.content
        ps = await client.call_tool("ps", {"project": name})
        tasks = ps.structured_content["services"]
        assert len(tasks) == 2 and {t["state"] for t in tasks} == {"running"}, tasks
        down = await client.call_tool("down", {"project": name})
        assert not down.is_error, down.content
    assert run(["docker", "service", "ls", "-q", "--filter", f"label=com.docker.stack.namespace={name}"]).strip() == ""


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The release's .mcpb bundle, packed by scripts/release.sh and unpacked as a host unpacks it."""
    out = tmp_path_factory.mktemp("release")
    run(
        ["bash", str(REPO / "scripts" / "release.sh"), "--snapshot", "--only", "bundle", "--out", str(out)], timeout=300
    )
    unpacked = out / "unpacked"
    with zipfile.ZipFile(out / f"compose-agent-{VERSION}.mcpb") as archive:
        archive.extractall(unpacked)
    assert sorted(p.relative_to(unpacked).as_posix() for p in unpacked.rglob("*") if p.is_file()) == [
        "manifest.json",
        "server/compose-agent-docker.sh",
    ]
    return unpacked


@pytest.fixture
def no_gnu_stat(tmp_path: Path) -> Path:
    """A PATH folder whose `stat` fails as BSD stat does on `-c`: the host looks like a Mac with Docker Desktop."""
    folder = tmp_path / "bsd"
    folder.mkdir()
    fake = folder / "stat"
    fake.write_text("#!/bin/sh\necho 'stat: illegal option -- c' >&2\nexit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    return folder


@pytest.mark.anyio
@pytest.mark.parametrize("read_only", [False, True])
async def test_the_bundle_runs_the_image_with_the_persons_settings(
    deploy_images: str, bundle: Path, stacks_world: Stacks, read_only: bool
) -> None:
    launch = mcpb_launch(bundle, {"stacks_dir": str(stacks_world.root), "read_only": read_only, "image": IMAGE})
    command = StdioLaunch(str(launch["command"]), list(launch["args"]), dict(launch["env"]))  # type: ignore[call-overload]
    seen = await over_stdio(command, stacks_world, CLIENT_ENV)
    seen.assert_served(stacks_world, read_only=read_only)
    wait_for(lambda: not containers_mounting(stacks_world.root), timeout=30, what="the bundle's container is removed")


@pytest.mark.anyio
async def test_the_bundle_asks_the_engine_for_the_sockets_group_where_stat_cannot(
    deploy_images: str, bundle: Path, stacks_world: Stacks, no_gnu_stat: Path
) -> None:
    launch = mcpb_launch(bundle, {"stacks_dir": str(stacks_world.root), "image": IMAGE})
    command = StdioLaunch(str(launch["command"]), list(launch["args"]), dict(launch["env"]))  # type: ignore[call-overload]
    env = {**CLIENT_ENV, "PATH": f"{no_gnu_stat}:{CLIENT_ENV['PATH']}"}
    seen = await over_stdio(command, stacks_world, env)
    seen.assert_served(stacks_world)


def test_the_bundle_refuses_settings_it_cannot_honour_with_a_message(deploy_images: str, bundle: Path) -> None:
    script = bundle / "server" / "compose-agent-docker.sh"
    cases = {
        "relative": ({"COMPOSE_AGENT_BUNDLE_STACKS_DIR": "stacks"}, "must be an absolute path"),
        "colon": ({"COMPOSE_AGENT_BUNDLE_STACKS_DIR": "/tmp/a:b"}, "holds a ':'"),
        "missing": ({"COMPOSE_AGENT_BUNDLE_STACKS_DIR": f"/tmp/{random_name('none')}"}, "does not exist"),
        "read-only": (
            {"COMPOSE_AGENT_BUNDLE_STACKS_DIR": "/tmp", "COMPOSE_AGENT_BUNDLE_READ_ONLY": "yes"},
            "true or false",
        ),
    }
    for case, (settings, message) in cases.items():
        env = {**CLIENT_ENV, "COMPOSE_AGENT_BUNDLE_IMAGE": IMAGE, **settings}
        done = subprocess.run(["/bin/sh", str(script)], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 1 and message in done.stderr and done.stdout == "", (case, done)
    assert grp.getgrgid(socket_gid())  # the group the tests above added exists on this host

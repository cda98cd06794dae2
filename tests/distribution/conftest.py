"""The project as a user installs it: a wheel built here, installed by an ordinary user into a venv of its own.

The user is made for the session with a random name, in the group that owns the Docker socket (as the
README asks of a user), with a temporary home; the user, the group and the home are removed afterwards.
Processes run as the user through ``setpriv`` (util-linux), so making one needs root, as CI has.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import _remove_project, random_name
from tests.gateway.mcp_tools import mcp_tools_modules, node_binary

REPO = Path(__file__).resolve().parents[2]
DOCKER_SOCKET = "/var/run/docker.sock"
# The folder the README's install route makes the venv in, under the user's home.
VENV_IN_HOME = ".local/share/compose-agent"
# Generous: a cold pip install downloads every dependency from the index.
INSTALL_TIMEOUT_S = 600
# Settings of this machine a user would have too: the CA bundle and the package index configuration.
_PASSED_ENV_PREFIXES = ("PIP_", "SSL_CERT_", "REQUESTS_CA_BUNDLE", "DOCKER_HOST", "LANG")


def run(
    argv: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float = 120, cwd: Path | None = None
) -> str:
    """Run a command to completion and return its stdout; on failure, fail with its output."""
    proc = subprocess.run(
        list(argv), env=None if env is None else dict(env), capture_output=True, text=True, timeout=timeout, cwd=cwd
    )
    if proc.returncode != 0:
        output = f"--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}"
        pytest.fail(f"{' '.join(argv)} exited {proc.returncode}\n{output}")
    return proc.stdout


@dataclass(frozen=True)
class User:
    """An ordinary user of this machine, in the Docker socket's group, with a home of its own."""

    name: str
    uid: int
    gid: int
    home: Path

    def argv(self, *command: str) -> list[str]:
        """``command`` run as this user, with the groups the user database gives it (docker among them)."""
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups", "--", *command]

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """What a login of this user has: its own HOME and PATH, and the machine's index and CA settings."""
        env = {k: v for k, v in os.environ.items() if k.startswith(_PASSED_ENV_PREFIXES)}
        env.update(
            HOME=str(self.home),
            USER=self.name,
            LOGNAME=self.name,
            PATH=f"{self.home}/bin:/usr/local/bin:/usr/bin:/bin",
        )
        env.update(extra or {})
        return env

    def run(self, *command: str, env: Mapping[str, str] | None = None, timeout: float = 120) -> str:
        return run(self.argv(*command), env=self.env(env), timeout=timeout, cwd=self.home)

    def give(self, source: Path, name: str | None = None) -> Path:
        """A copy of ``source`` in the user's home, owned by the user."""
        target = self.home / (name or source.name)
        shutil.copy2(source, target)
        os.chown(target, self.uid, self.gid)
        return target

    @property
    def venv(self) -> Path:
        return self.home / VENV_IN_HOME


@pytest.fixture(scope="session")
def user() -> Iterator[User]:
    """A fresh user in the socket's group; removed afterwards with its group and home."""
    if os.geteuid() != 0:
        pytest.fail(
            "the distribution tests make a throwaway user (useradd), which needs root; run them as root, as CI does"
        )
    for tool in ("useradd", "userdel", "setpriv"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: install passwd and util-linux (Debian's standard tools)")
    socket_group = grp.getgrgid(os.stat(DOCKER_SOCKET).st_gid).gr_name
    name = random_name("ca")
    home = Path(tempfile.mkdtemp(prefix=f"compose-agent-{name}-", dir="/tmp"))
    run(
        [
            "useradd",
            "--user-group",
            "--groups",
            socket_group,
            "--home-dir",
            str(home),
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            name,
        ]
    )
    try:
        entry = pwd.getpwnam(name)
        for folder in (home, home / "bin"):
            folder.mkdir(exist_ok=True)
            os.chown(folder, entry.pw_uid, entry.pw_gid)
        home.chmod(0o700)
        yield User(name, entry.pw_uid, entry.pw_gid, home)
    finally:
        # userdel refuses a user with running processes: a test that leaves one behind fails here.
        subprocess.run(["userdel", name], check=False, capture_output=True, timeout=60)
        shutil.rmtree(home, ignore_errors=True)
    assert name not in {u.pw_name for u in pwd.getpwall()}, f"the test user {name} could not be removed"


def user_python(user: User) -> str:
    """A Python >= 3.11 with venv that the user can run (the system's, not this test run's, which may be private)."""
    check = "import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))"
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if (
            Path(candidate).exists()
            and subprocess.run(user.argv(candidate, "-c", check), env=user.env()).returncode == 0
        ):
            return candidate
    pytest.fail("no Python >= 3.11 with venv for an ordinary user: apt-get install python3 python3-venv")


def build_wheel(target: Path) -> Path:
    """The project's wheel, built from a clean copy of the package folders (a stale build/ could leak in)."""
    source = target / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    for package in ("gateway", "statuspanel", "watchdog"):
        shutil.copytree(REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(target / "wheel"), str(source)], timeout=300
    )
    (wheel,) = (target / "wheel").glob("compose_agent-*.whl")
    return wheel


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="session")
def installed(user: User, wheel: Path) -> User:
    """The README's pip route, as the user: a venv in ~/.local/share/compose-agent, the wheel with compose-cli."""
    python = user_python(user)
    own_wheel = user.give(wheel)
    constraints = user.give(REPO / "constraints.txt")
    user.run(python, "-m", "venv", str(user.venv))
    # Pinned like every other install of the project, so that a new release of a dependency cannot
    # turn this test red; the wheel's own requirements are what is resolved.
    user.run(
        str(user.venv / "bin" / "pip"),
        "install",
        "-q",
        "-c",
        str(constraints),
        f"{own_wheel}[compose-cli]",
        timeout=INSTALL_TIMEOUT_S,
    )
    return user


@dataclass(frozen=True)
class Stacks:
    """A stacks folder any user can read, with one stack folder, and one compose project running without a folder."""

    root: Path
    folder_stack: str
    external: str


@pytest.fixture(scope="module")
def stacks_world(busybox_image: str) -> Iterator[Stacks]:
    root = Path(tempfile.mkdtemp(prefix="compose-agent-dist-stacks-", dir="/tmp"))
    root.chmod(0o755)
    folder_stack, external = random_name("web"), random_name("ext")
    (root / folder_stack).mkdir(mode=0o755)
    (root / folder_stack / "compose.yaml").write_text(
        f"services:\n  web:\n    image: {busybox_image}\n    init: true\n    command: [sleep, '1']\n"
    )
    (root / folder_stack / "compose.yaml").chmod(0o644)
    # A compose project that runs without a folder: only the engine knows it, so listing it proves the
    # socket was reached.
    run(
        [
            "docker",
            "run",
            "-d",
            "--init",
            "--name",
            f"{external}-web-1",
            "--label",
            f"com.docker.compose.project={external}",
            "--label",
            "com.docker.compose.service=web",
            busybox_image,
            # Runs until removed, however long the module takes (a fixed sleep could end mid-module).
            "sh",
            "-c",
            "trap 'exit 0' TERM; while :; do sleep 1; done",
        ]
    )
    try:
        yield Stacks(root, folder_stack, external)
    finally:
        _remove_project(external)
        _remove_project(folder_stack)
        shutil.rmtree(root, ignore_errors=True)


def mcpb_cli() -> list[str]:
    """The pinned @anthropic-ai/mcpb CLI (scripts/mcp-tools), on Node >= 22."""
    cli = mcp_tools_modules() / "@anthropic-ai" / "mcpb" / "dist" / "cli" / "cli.js"
    if not cli.is_file():
        pytest.fail(
            "@anthropic-ai/mcpb is missing from the MCP tools: run scripts/setup.sh (scripts/mcp-tools/package.json)"
        )
    return [node_binary(), str(cli)]


def mcpb_launch(bundle_dir: Path, user_config: Mapping[str, object]) -> dict[str, object]:
    """What a host runs for an unpacked bundle: mcpb's own substitution of ``user_config`` into its mcp_config."""
    script = (
        "const { getMcpConfigForManifest } = await import(process.argv[1]);"
        "const fs = await import('node:fs');"
        "const manifest = JSON.parse(fs.readFileSync(process.argv[2] + '/manifest.json', 'utf8'));"
        "const config = await getMcpConfigForManifest({manifest, extensionPath: process.argv[2], systemDirs: {},"
        " userConfig: JSON.parse(process.argv[3]), pathSeparator: '/'});"
        "process.stdout.write(JSON.stringify(config ?? null));"
    )
    module = mcp_tools_modules() / "@anthropic-ai" / "mcpb" / "dist" / "index.js"
    out = run(
        [node_binary(), "--input-type=module", "-e", script, str(module), str(bundle_dir), json.dumps(user_config)]
    )
    launch = json.loads(out)
    assert launch is not None, f"mcpb gave no launch configuration for {dict(user_config)}"
    return dict(launch)

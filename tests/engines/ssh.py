"""SSH access from this machine to a test engine, for every process here: ``DOCKER_HOST=ssh://root@IP``.

The docker CLI, Compose and the gateway under test all run the system ``ssh``, which reads the
configuration of the user in the password database (not ``$HOME``) and the system's. So each engine
gets a file in ``/etc/ssh/ssh_config.d/`` with a ``Host`` block for its address only: its own client
key, known hosts made from the host key the engine printed over ``docker exec`` (a trusted channel,
so no trust on first use), and a multiplexed master connection whose socket lives in the engine's
folder. The file goes when the engine does.
"""

from __future__ import annotations

import fnmatch
import logging
import re
import shutil
import time
from pathlib import Path

from tests.engines.errors import EngineError, run

__all__ = [
    "SSH_CONFIG_DIR",
    "SshAccess",
    "check_ssh_client",
    "config_path",
    "make_client_key",
]

logger = logging.getLogger(__name__)

SSH_CONFIG_DIR = Path("/etc/ssh/ssh_config.d")
SYSTEM_CONFIG = Path("/etc/ssh/ssh_config")
CONFIG_PREFIX = "compose-agent-test-"
SSHD_WAIT_S = 30.0

_INCLUDE = re.compile(r"^\s*Include\s+(.+?)\s*$", re.I | re.M)


def config_path(engine_name: str) -> Path:
    """The ssh client configuration file of one engine."""
    return SSH_CONFIG_DIR / f"{CONFIG_PREFIX}{engine_name}.conf"


def check_ssh_client() -> None:
    """Check that ssh, ssh-keygen and ssh-keyscan are here and that the system config reads our folder.

    Raises:
        EngineError: something is missing; the message says what to install or add.
    """
    missing = [tool for tool in ("ssh", "ssh-keygen", "ssh-keyscan") if shutil.which(tool) is None]
    if missing:
        raise EngineError(f"{', '.join(missing)} not found: run bash scripts/setup.sh (apt-get install openssh-client)")
    probe = str(config_path("probe"))
    try:
        text = SYSTEM_CONFIG.read_text()
    except OSError as exc:
        raise EngineError(f"cannot read {SYSTEM_CONFIG} ({exc}); reinstall openssh-client") from exc
    for line in _INCLUDE.findall(text):
        for pattern in line.split():
            # Relative includes in the system file are relative to /etc/ssh.
            pattern = pattern if pattern.startswith("/") else f"/etc/ssh/{pattern}"
            if fnmatch.fnmatch(probe, pattern):
                return
    raise EngineError(
        f"{SYSTEM_CONFIG} does not include {SSH_CONFIG_DIR}/*.conf, where the SSH engines' settings go: "
        f"add the line 'Include {SSH_CONFIG_DIR}/*.conf' at its top (Debian's default has it)"
    )


def make_client_key(folder: Path) -> str:
    """Make a fresh ed25519 key pair in ``folder`` (``id_ed25519``, mode 0600); return the public key line.

    Raises:
        EngineError: ssh-keygen failed.
    """
    key = folder / "id_ed25519"
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"compose-agent-test@{folder.name}", "-f", str(key)])
    key.chmod(0o600)
    return (folder / "id_ed25519.pub").read_text().strip()


class SshAccess:
    """The client side of one engine's sshd: key, known hosts, the config file and the master connection."""

    def __init__(self, engine_name: str, ip: str, folder: Path) -> None:
        self.ip = ip
        self.folder = folder
        self.config = config_path(engine_name)
        self.key = folder / "id_ed25519"
        self.known_hosts = folder / "known_hosts"
        self.control_path = folder / "mux"

    def install(self, host_key: str) -> None:
        """Trust ``host_key`` (``ssh-ed25519 AAAA...``) for this address and write the config file.

        Raises:
            EngineError: the system config does not read our folder (see :func:`check_ssh_client`).
        """
        self.known_hosts.write_text(f"{self.ip} {host_key}\n")
        self.known_hosts.chmod(0o600)
        self.config.write_text(
            f"# The compose-agent test engine at {self.ip} (tests/engines); removed with the engine.\n"
            f"Host {self.ip}\n"
            "    User root\n"
            f"    IdentityFile {self.key}\n"
            "    IdentitiesOnly yes\n"
            f"    UserKnownHostsFile {self.known_hosts}\n"
            "    GlobalKnownHostsFile /dev/null\n"
            "    StrictHostKeyChecking yes\n"
            "    BatchMode yes\n"
            # One master connection per engine: later sessions (docker, compose, the gateway) ride it.
            "    ControlMaster auto\n"
            f"    ControlPath {self.control_path}\n"
            "    ControlPersist 120\n"
            # An engine that stops answering: a new connection gives up after 10 s (banner exchange
            # included) instead of never, and an open master ends within about 20 s. Options given on
            # the command line win (the docker CLI passes ConnectTimeout=30).
            "    ConnectTimeout 10\n"
            "    ServerAliveInterval 5\n"
            "    ServerAliveCountMax 3\n"
        )
        self.config.chmod(0o644)

    def wait_until_served(self, host_key: str, timeout: float = SSHD_WAIT_S) -> None:
        """Poll ``ssh-keyscan`` until sshd answers here with ``host_key``; its first scans come back empty.

        Raises:
            EngineError: sshd did not answer in time, or answered with another key.
        """
        expected = host_key.split()[:2]
        deadline = time.monotonic() + timeout
        seen = ""
        while time.monotonic() < deadline:
            scan = run(["ssh-keyscan", "-T", "2", "-t", "ed25519", self.ip], check=False, timeout=10)
            for line in scan.stdout.splitlines():
                if line.split()[1:3] == expected:
                    return
                seen = line
            time.sleep(0.1)
        detail = f"it answered with another key: {seen}" if seen else "it did not answer"
        raise EngineError(f"sshd at {self.ip} is not serving its host key within {timeout:g} s: {detail}")

    def close(self) -> None:
        """Stop the master connection (if one runs) and remove the config file; files in the folder stay."""
        if self.config.exists() and self.control_path.exists():
            try:
                run(["ssh", "-O", "exit", f"root@{self.ip}"], check=False, timeout=10)
            except EngineError as exc:
                # Removing the engine ends the connection anyway; the master then exits on its own.
                logger.warning("stopping the ssh master of %s: %s", self.ip, exc)
        self.config.unlink(missing_ok=True)

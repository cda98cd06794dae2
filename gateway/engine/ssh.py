"""The ``ssh`` command lines for an ``ssh://`` engine: the gateway's own sessions and the CLIs' connections.

The gateway reaches an SSH engine as the docker CLI does, ``ssh [options] -- host docker system
dial-stdio``, so the user's ssh config, keys and known hosts apply. What it adds on the command
line (where options win over the config files):

- ``BatchMode=yes``: a gateway has nobody to type a password or accept a host key;
- ``ConnectTimeout``: the engine's own timeout, so a host that stops answering ends a new ssh too;
- ``ServerAliveInterval``: a host that vanished ends the connection, and the event stream on it;
- multiplexing, unless the user's config already multiplexes this host: ``ControlMaster=auto``
  with a control socket in a private folder of this process, and ``ControlPersist``. The docker
  CLI and Compose (2.40 and the CLI 28 do not multiplex by themselves) get the same options
  through an ``ssh`` in a folder put first on their ``PATH``, so a ``compose up`` rides the
  gateway's master connection instead of opening its own handshakes.
"""

from __future__ import annotations

import logging
import math
import os
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from .endpoint import Address

__all__ = ["SshPlan", "plan_ssh"]

logger = logging.getLogger(__name__)

# How long an idle master connection the gateway opened stays up after its last session.
CONTROL_PERSIST_S = 60
_CHECK_TIMEOUT_S = 5.0


@dataclass
class SshPlan:
    """How one ssh engine is reached: the session command, and (when the gateway multiplexes) its folder."""

    ssh: str
    target: list[str]
    argv: list[str]
    #: Private folder (0700) with the control sockets and the CLIs' ``ssh``; None if the user multiplexes.
    folder: Path | None = None
    options: list[str] = field(default_factory=list)

    def cli_path(self, path: str) -> str:
        """``PATH`` for the docker CLI and Compose: the folder with our ``ssh`` first, when there is one."""
        if self.folder is None:
            return path
        return f"{self.folder / 'bin'}{os.pathsep}{path}" if path else str(self.folder / "bin")

    def close(self) -> None:
        """Stop the master connection this process opened, and remove the folder."""
        if self.folder is None:
            return
        control = ["-o", f"ControlPath={self.folder}/%C"]
        try:
            subprocess.run(
                [self.ssh, *control, "-O", "exit", *self.target],
                capture_output=True,
                timeout=_CHECK_TIMEOUT_S,
                check=False,
                start_new_session=True,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            logger.debug("stopping the ssh master of %s: %s", self.target[-1], exc)
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder = None


def plan_ssh(address: Address, *, timeout: float, ssh: str | None = None) -> SshPlan:
    """The ssh command for ``address``'s ``dial-stdio`` sessions (blocking: it asks ``ssh -G`` once).

    Raises:
        ConfigError: there is no ``ssh`` client.
    """
    found = ssh or shutil.which("ssh")
    if found is None:
        raise ConfigError(
            f"DOCKER_HOST=ssh://{address.host} needs the OpenSSH client (ssh) on PATH: apt-get install openssh-client"
        )
    target = []
    if address.user:
        target += ["-l", address.user]
    if address.port:
        target += ["-p", str(address.port)]
    target += ["--", address.host]
    remote = ["docker", "system", "dial-stdio"]
    if address.path:
        remote = ["docker", f"--host=unix://{address.path}", "system", "dial-stdio"]
    options = [
        "-o",
        "BatchMode=yes",
        "-o",
        f"ConnectTimeout={max(1, math.ceil(timeout))}",
        # A host that vanished ends its connection (and the event stream on it) within about 45 s.
        "-o",
        "ServerAliveInterval=15",
        "-o",
        "ServerAliveCountMax=3",
    ]
    folder = None
    if not _user_multiplexes(found, target):
        folder = Path(tempfile.mkdtemp(prefix="compose-agent-ssh-"))  # 0700, ours alone
        options = [
            "-o",
            "ControlMaster=auto",
            "-o",
            f"ControlPath={folder}/%C",
            "-o",
            f"ControlPersist={CONTROL_PERSIST_S}",
            *options,
        ]
        _write_cli_ssh(folder / "bin", found, options)
    argv = [found, *options, "-T", *target, *remote]
    return SshPlan(ssh=found, target=target, argv=argv, folder=folder, options=options)


def _user_multiplexes(ssh: str, target: list[str]) -> bool:
    """Whether the user's ssh config already gives this host a master connection (``ssh -G`` says)."""
    try:
        done = subprocess.run(
            [ssh, "-G", *target],
            capture_output=True,
            text=True,
            timeout=_CHECK_TIMEOUT_S,
            check=False,
            start_new_session=True,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    settings = dict(line.partition(" ")[::2] for line in done.stdout.splitlines())
    master = settings.get("controlmaster", "false")
    return done.returncode == 0 and master != "false" and settings.get("controlpath", "none") != "none"


def _write_cli_ssh(folder: Path, ssh: str, options: list[str]) -> None:
    """An ``ssh`` for the docker CLI and Compose: the real one, with the gateway's options first."""
    folder.mkdir(mode=0o700)
    script = folder / "ssh"
    quoted = " ".join(shlex.quote(part) for part in [ssh, *options])
    script.write_text(
        "#!/bin/sh\n"
        "# Written by compose-agent for the docker CLI and Compose it runs: their ssh connections ride\n"
        "# the gateway's multiplexed master connection. Removed when the gateway stops.\n"
        f'exec {quoted} "$@"\n'
    )
    script.chmod(0o700)

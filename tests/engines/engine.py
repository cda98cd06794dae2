"""One Docker engine in a container on this machine (Docker-in-Docker), reachable over TLS, SSH or both.

``start_engine(image, tls=True, ssh=True)`` returns a running :class:`Engine`: a container with a
random name, its own ``/var/lib/docker`` volume and dockerd inside, answering at its bridge address
(no host ports, so runs on one machine never collide). ``engine.remove()`` leaves nothing behind:
container, volume, certificates and keys, the ssh config file, the ssh master connection.

This host refuses ``--privileged``; the recipe below (every capability but SYS_RESOURCE, no seccomp or
AppArmor profile, all devices, a private cgroup namespace, cgroups remounted writable inside) is what
runs a nested dockerd here (see ENVIRONMENT.md).
"""

from __future__ import annotations

import http.client
import logging
import os
import secrets
import shutil
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Literal, Protocol, TypeVar

from tests.engines.errors import EngineError, run
from tests.engines.leftovers import ENGINE_LABEL, owner_labels
from tests.engines.ssh import SshAccess, check_ssh_client, make_client_key

__all__ = ["TLS_PORT", "Engine", "Via", "container_run_args", "in_parallel", "start_engine"]

logger = logging.getLogger(__name__)

TLS_PORT = 2376
START_TIMEOUT_S = 90.0
Via = Literal["tls", "ssh"]


class Removable(Protocol):
    def remove(self) -> None: ...


R = TypeVar("R", bound=Removable)
# The client variables a caller's own environment may hold, which would otherwise mix with ours.
_CLIENT_VARS = ("DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "DOCKER_CONTEXT", "DOCKER_TLS")

# The script that starts an engine inside its container, and reports back on fd 3.
START_SCRIPT = (Path(__file__).parent / "engine-start.sh").read_text()


def container_run_args() -> list[str]:
    """The ``docker run`` options that let a container run its own dockerd on this host (no --privileged)."""
    return [
        # A `sleep` as PID 1 never reaps: dead background processes would look alive.
        "--init",
        "--cap-add",
        "ALL",
        "--cap-drop",
        "SYS_RESOURCE",
        "--security-opt",
        "seccomp=unconfined",
        "--security-opt",
        "apparmor=unconfined",
        "--security-opt",
        "systempaths=unconfined",
        "--device-cgroup-rule",
        "a *:* rwm",
        "--cgroupns",
        "private",
    ]


class Engine:
    """A running engine container: reach it from this machine through :meth:`docker_env`, inside with :meth:`docker`."""

    def __init__(self, name: str, image: str, workdir: Path, *, tls: bool, ssh: bool) -> None:
        self.name = name
        self.image = image
        self.volume = f"{name}-docker"
        self.workdir = workdir
        self.ip = ""
        self.tls = tls
        self.ssh: SshAccess | None = None
        self.paused = False
        self._ssh_wanted = ssh

    def __repr__(self) -> str:
        return f"Engine({self.name!r}, ip={self.ip!r}, tls={self.tls}, ssh={self.ssh is not None})"

    # -- reaching it ---------------------------------------------------------------------------
    @property
    def tls_dir(self) -> Path:
        """``ca.pem``, ``cert.pem`` and ``key.pem`` for ``DOCKER_CERT_PATH``."""
        if not self.tls:
            raise EngineError(f"engine {self.name} was started without TLS (start_engine(..., tls=True))")
        return self.workdir / "tls"

    @property
    def tls_host(self) -> str:
        """``tcp://IP:2376``, the TLS listener."""
        return f"tcp://{self.ip}:{TLS_PORT}"

    @property
    def ssh_host(self) -> str:
        """``ssh://root@IP``, through sshd and ``docker system dial-stdio``."""
        if self.ssh is None:
            raise EngineError(f"engine {self.name} was started without SSH (start_engine(..., ssh=True))")
        return f"ssh://root@{self.ip}"

    def _via(self, via: Via | None) -> Via:
        if via is not None:
            return via
        if self.tls:
            return "tls"
        if self.ssh is not None:
            return "ssh"
        raise EngineError(f"engine {self.name} has neither TLS nor SSH; reach it with engine.docker(...)")

    def docker_env(self, via: Via | None = None) -> dict[str, str]:
        """The variables every Docker client reads to reach this engine (TLS unless ``via="ssh"``).

        Raises:
            EngineError: the engine was started without that access.
        """
        if self._via(via) == "ssh":
            return {"DOCKER_HOST": self.ssh_host}
        return {"DOCKER_HOST": self.tls_host, "DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(self.tls_dir)}

    def environ(self, via: Via | None = None, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """``base`` (this process's environment by default) with its own Docker client variables replaced by ours."""
        env = {k: v for k, v in (os.environ if base is None else base).items() if k not in _CLIENT_VARS}
        return {**env, **self.docker_env(via)}

    def cli(self, *args: str, via: Via | None = None, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """The docker CLI on this machine, against this engine through TLS or SSH.

        Raises:
            EngineError: it exited non-zero or outlived ``timeout``.
        """
        return run(["docker", *args], env=self.environ(via), timeout=timeout)

    def exec(
        self, *argv: str, input: str | None = None, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the engine's container (``docker exec``).

        Raises:
            EngineError: with ``check``, it exited non-zero; always, when it outlives ``timeout``.
        """
        flags = ["-i"] if input is not None else []
        return run(["docker", "exec", *flags, self.name, *argv], input=input, check=check, timeout=timeout)

    def docker(self, *args: str, check: bool = True, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """The engine's own docker CLI, on its own socket: what the engine really holds, whatever the network does."""
        return self.exec("docker", *args, check=check, timeout=timeout)

    def ping(self, timeout: float = 2.0) -> bool:
        """Whether the TLS listener answers ``GET /_ping`` with ``OK`` within ``timeout`` (no exception)."""
        context = ssl.create_default_context(cafile=str(self.tls_dir / "ca.pem"))
        context.load_cert_chain(str(self.tls_dir / "cert.pem"), str(self.tls_dir / "key.pem"))
        conn = http.client.HTTPSConnection(self.ip, TLS_PORT, timeout=timeout, context=context)
        try:
            conn.request("GET", "/_ping")
            response = conn.getresponse()
            return response.status == 200 and response.read() == b"OK"
        except OSError:
            return False
        finally:
            conn.close()

    # -- changing it ---------------------------------------------------------------------------
    def load_image(self, tag: str, timeout: float = 120.0) -> None:
        """Copy a local image into the engine (``docker save | docker exec -i NAME docker load``); there is no registry.

        Raises:
            EngineError: the image is not on this machine, or the load failed.
        """
        save = subprocess.Popen(["docker", "save", tag], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert save.stdout is not None
        try:
            self.load_archive(save.stdout, timeout)
        finally:
            save.stdout.close()
            _, err = save.communicate(timeout=timeout)
        if save.returncode != 0:
            raise EngineError(f"docker save {tag}: exit {save.returncode}: {err.decode(errors='replace').strip()}")

    def load_archive(self, archive: IO[bytes], timeout: float = 120.0) -> None:
        """Load images from a ``docker save`` archive (an open file or pipe) into the engine.

        Raises:
            EngineError: the load failed.
        """
        run(["docker", "exec", "-i", self.name, "docker", "load", "-q"], stdin=archive, timeout=timeout)

    def pause(self) -> None:
        """Freeze every process of the engine: connections open but nothing answers, as a host that hangs."""
        run(["docker", "pause", self.name])
        self.paused = True

    def unpause(self) -> None:
        run(["docker", "unpause", self.name])
        self.paused = False

    @contextmanager
    def paused_for(self) -> Iterator[Engine]:
        """Paused inside the ``with``, answering again after it, even when the block fails."""
        self.pause()
        try:
            yield self
        finally:
            self.unpause()

    def remove(self) -> None:
        """Remove the container, its volume, the TLS and SSH files and the ssh master. Safe to call twice.

        Raises:
            EngineError: something could not be removed (the rest was still tried).
        """
        errors: list[str] = []
        if self.paused:
            # A frozen engine would hold up the ssh master's goodbye; unfrozen, it says it at once.
            run(["docker", "unpause", self.name], check=False)
            self.paused = False
        if self.ssh is not None:
            self.ssh.close()
        for argv in (["docker", "rm", "-f", "-v", self.name], ["docker", "volume", "rm", "-f", self.volume]):
            proc = run(argv, check=False, timeout=60)
            if proc.returncode != 0 and "No such" not in proc.stderr:
                errors.append(f"{' '.join(argv)}: {proc.stderr.strip()}")
        shutil.rmtree(self.workdir, ignore_errors=True)
        if errors:
            raise EngineError(f"removing engine {self.name}: " + "; ".join(errors))

    # -- starting it ---------------------------------------------------------------------------
    def _start(self, network: str | None) -> None:
        labels = {ENGINE_LABEL: self.name, **owner_labels()}
        label_args = [arg for key, value in labels.items() for arg in ("--label", f"{key}={value}")]
        authorized_key = ""
        if self._ssh_wanted:
            check_ssh_client()
            (self.workdir / "ssh").mkdir(mode=0o700)
            authorized_key = make_client_key(self.workdir / "ssh")
        run(["docker", "volume", "create", *label_args, self.volume])
        net = ["--network", network] if network else []
        run(
            ["docker", "run", "-d", "--name", self.name, "--hostname", self.name, *label_args, *net,
             *container_run_args(), "-v", f"{self.volume}:/var/lib/docker", self.image, "sleep", "infinity"],
            what=f"starting engine container {self.name}",
        )  # fmt: skip
        template = "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}"
        addresses = run(["docker", "inspect", "-f", template, self.name]).stdout.split()
        if not addresses:
            raise EngineError(f"engine container {self.name} has no IP address (network {network or 'bridge'})")
        self.ip = addresses[0]
        env = {"ENGINE": self.name, "IP": self.ip, "TLS": "1" if self.tls else "0", "AUTHORIZED_KEY": authorized_key}
        exports = "".join(f"{key}='{value}'\n" for key, value in env.items())
        out = self.exec(
            "sh", "-s", input=f"WAIT_S={int(START_TIMEOUT_S)}\n{exports}{START_SCRIPT}", timeout=START_TIMEOUT_S + 30
        ).stdout
        host_key, files = _parse_start_output(out)
        if self.tls:
            folder = self.workdir / "tls"
            folder.mkdir(mode=0o700)
            for filename, text in files.items():
                (folder / filename).write_text(text)
            (folder / "key.pem").chmod(0o600)
        if self._ssh_wanted:
            if not host_key:
                raise EngineError(f"engine {self.name} printed no ssh host key")
            self.ssh = SshAccess(self.name, self.ip, self.workdir / "ssh")
            self.ssh.install(host_key)
            self.ssh.wait_until_served(host_key)


def _parse_start_output(out: str) -> tuple[str, dict[str, str]]:
    """The ssh host key and the client's TLS files, from what :data:`START_SCRIPT` wrote to fd 3."""
    host_key = ""
    files: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in out.splitlines():
        if line.startswith("ssh-host-key "):
            host_key = line.removeprefix("ssh-host-key ").strip()
        elif line.startswith("file "):
            current = files.setdefault(line.removeprefix("file ").strip(), [])
        elif current is not None:
            current.append(line)
    return host_key, {name: "\n".join(lines) + "\n" for name, lines in files.items()}


def start_engine(
    image: str,
    *,
    tls: bool = False,
    ssh: bool = False,
    network: str | None = None,
    prefix: str = "compose-agent-engine",
) -> Engine:
    """Start one engine from ``image`` (see :func:`tests.engines.image.ensure_engine_image`); return once it answers.

    ``tls`` adds a listener on ``tcp://IP:2376`` with ``--tlsverify`` and writes the client side to
    ``engine.tls_dir``; ``ssh`` runs sshd for root with a fresh client key and writes this machine's
    ssh config for the engine's address. ``network`` puts it on that Docker network instead of the
    default bridge (the server certificate names the address there, and the container name).

    Raises:
        EngineError: a step failed; whatever it had made is removed first.
    """
    name = f"{prefix}-{secrets.token_hex(4)}"
    workdir = Path(tempfile.gettempdir()) / name
    workdir.mkdir(mode=0o700)
    engine = Engine(name, image, workdir, tls=tls, ssh=ssh)
    started = time.monotonic()
    try:
        engine._start(network)
    except BaseException:
        try:
            engine.remove()
        except EngineError as exc:
            logger.warning("after a failed start: %s", exc)
        raise
    logger.info("engine %s at %s answers after %.1f s", name, engine.ip, time.monotonic() - started)
    return engine


def in_parallel(starts: Sequence[Callable[[], R]]) -> list[R]:
    """Run each start in its own thread and return what they made, in order.

    Their waits (on dockerd, sshd, the swarm) overlap; how much that saves depends on the free cores.
    When any start fails, whatever the others made is removed and the first error raised.

    Raises:
        Exception: the first start's error, after the others' engines are removed.
    """
    with ThreadPoolExecutor(max_workers=max(1, len(starts)), thread_name_prefix="engine-start") as pool:
        futures = [pool.submit(start) for start in starts]
    made = [f.result() for f in futures if f.exception() is None]
    failed = [exc for f in futures if (exc := f.exception()) is not None]
    if failed:
        for thing in made:
            try:
                thing.remove()
            except EngineError as exc:
                logger.warning("after a failed start: %s", exc)
        raise failed[0]
    return made

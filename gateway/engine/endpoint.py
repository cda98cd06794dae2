"""Where an engine is and how to reach it: one value, read the way every Docker tool reads it.

``DOCKER_HOST`` takes ``unix:///path``, ``tcp://host[:port]`` and ``ssh://[user@]host[:port][/socket]``;
``DOCKER_TLS_VERIFY`` turns TLS on for ``tcp://`` (whatever its value, as in the docker CLI and
Compose) and ``DOCKER_CERT_PATH`` names the folder holding ``ca.pem``, ``cert.pem`` and ``key.pem``
(``~/.docker`` when unset). :class:`EngineEndpoint` is that, plus the deadline of every call; the
gateway's own engine is built from those variables, and each ``hosts`` entry of ``config.json``
gives the same fields.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from ..errors import ConfigError

__all__ = [
    "DEFAULT_DOCKER_HOST",
    "CLIENT_VARIABLES",
    "EngineEndpoint",
    "Address",
    "parse_docker_host",
    "parse_tls_verify",
]

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
# The variables a Docker client reads to find its engine. The gateway sets them for the CLIs it runs
# from its own endpoint, so that Compose and the docker CLI reach the engine the gateway reads.
CLIENT_VARIABLES = ("DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "DOCKER_TLS", "DOCKER_CONTEXT")
TLS_FILES = ("ca.pem", "cert.pem", "key.pem")

# A host name or user as ssh and TCP take them: nothing a shell or ssh's option parser could read
# as something else (a leading "-" would be an option).
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,252}")
_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}")
# The remote socket path goes into the command ssh runs through the remote shell: plain characters only.
_REMOTE_PATH = re.compile(r"/[A-Za-z0-9._/-]{1,200}")
_FALSE_WORDS = frozenset({"0", "false", "no", "off"})


@dataclass(frozen=True)
class Address:
    """A parsed ``DOCKER_HOST``: the scheme and what it names."""

    scheme: Literal["unix", "tcp", "ssh"]
    path: str = ""  # unix: the socket; ssh: the remote socket, if not the default
    host: str = ""
    port: int | None = None
    user: str | None = None


def parse_docker_host(value: str) -> Address:
    """``DOCKER_HOST``'s value, checked and taken apart.

    Raises:
        ValueError: not a ``unix://``, ``tcp://`` or ``ssh://`` address this gateway can use,
            with what is expected.
    """
    scheme, sep, rest = value.partition("://")
    if not sep or scheme not in ("unix", "tcp", "ssh"):
        raise ValueError("DOCKER_HOST must be unix:///path/to/docker.sock, tcp://host:port or ssh://[user@]host[:port]")
    if scheme == "unix":
        if not rest.startswith("/") or "\x00" in rest:
            raise ValueError("a unix:// DOCKER_HOST needs an absolute socket path: unix:///var/run/docker.sock")
        return Address("unix", path=rest)
    parts = urlsplit(value)
    if parts.query or parts.fragment or parts.password:
        raise ValueError(f"a {scheme}:// DOCKER_HOST takes no password, query or fragment")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"the port of DOCKER_HOST must be a number from 1 to 65535 ({scheme}://host:port)") from None
    host = parts.hostname or ""
    if not _valid_host(host):
        raise ValueError(f"DOCKER_HOST names no usable host: {scheme}://host[:port], host a name or an IP address")
    if port == 0:
        raise ValueError("the port of DOCKER_HOST must be from 1 to 65535")
    if scheme == "tcp":
        if parts.username or parts.path not in ("", "/"):
            raise ValueError("a tcp:// DOCKER_HOST is tcp://host:port, with no user or path")
        return Address("tcp", host=host, port=port)
    if parts.username is not None and not _USER.fullmatch(parts.username):
        raise ValueError("the user of an ssh:// DOCKER_HOST may hold letters, digits, '.', '_' and '-'")
    path = parts.path if parts.path not in ("", "/") else ""
    if path and not _REMOTE_PATH.fullmatch(path):
        raise ValueError("the socket path of an ssh:// DOCKER_HOST may hold letters, digits, '.', '_', '-' and '/'")
    return Address("ssh", path=path, host=host, port=port, user=parts.username)


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(_NAME.fullmatch(host))


@dataclass(frozen=True)
class EngineEndpoint:
    """An engine's connection settings: its address, TLS, and the deadline of each call to it.

    ``cert_path`` is read only with ``tls_verify`` (it defaults to ``~/.docker`` there, as in every
    Docker tool: see :meth:`from_environ`). ``timeout`` bounds every call, connecting included; an
    engine that does not answer within it is reported degraded and later calls fail fast.

    Raises:
        ConfigError: a malformed address, TLS asked for on anything but ``tcp://``, a certificate
            folder without ``ca.pem`` (or with only one of ``cert.pem`` and ``key.pem``), or a
            timeout that is not positive.
    """

    docker_host: str = DEFAULT_DOCKER_HOST
    tls_verify: bool = False
    cert_path: Path | None = None
    timeout: float = 10.0

    def __post_init__(self) -> None:
        try:
            address = parse_docker_host(self.docker_host)
        except ValueError as exc:
            raise ConfigError(f"{exc} (got {self.docker_host[:100]!r})") from None
        if not self.timeout > 0:
            raise ConfigError(f"the engine timeout must be a positive number of seconds, not {self.timeout!r}")
        if self.tls_verify:
            if address.scheme != "tcp":
                raise ConfigError(f"TLS (tls_verify) applies to a tcp:// engine, not {self.docker_host}")
            if self.cert_path is None:
                raise ConfigError(f"TLS to {self.docker_host} needs cert_path: a folder with ca.pem, cert.pem, key.pem")
            self.tls_files()  # said at start-up, not at the first call

    @classmethod
    def from_environ(
        cls,
        environ: Mapping[str, str],
        *,
        docker_host: str | None = None,
        tls_verify: bool | None = None,
        cert_path: Path | None = None,
        timeout: float = 10.0,
    ) -> EngineEndpoint:
        """The endpoint the standard variables describe; the keyword arguments, where given, win.

        As the docker CLI: TLS is on when ``DOCKER_TLS_VERIFY`` is set to anything, and only for a
        ``tcp://`` host; the certificates are in ``DOCKER_CERT_PATH``, else ``$HOME/.docker``.

        Raises:
            ConfigError: see the class.
        """
        host = docker_host or environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST
        if tls_verify is None:
            try:
                tls_verify = parse_tls_verify(environ.get("DOCKER_TLS_VERIFY", ""))
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        if not host.startswith("tcp://"):
            tls_verify = False  # the docker CLI ignores the TLS variables for unix:// and ssh:// too
        if tls_verify and cert_path is None:
            cert_path = Path(environ.get("DOCKER_CERT_PATH") or Path(environ.get("HOME", "/root")) / ".docker")
        return cls(host, tls_verify=tls_verify, cert_path=cert_path if tls_verify else None, timeout=timeout)

    @property
    def address(self) -> Address:
        return parse_docker_host(self.docker_host)

    def tls_files(self) -> tuple[Path, Path | None, Path | None]:
        """``ca.pem``, and ``cert.pem`` and ``key.pem`` if both are there (a client certificate is optional).

        Raises:
            ConfigError: no ``ca.pem``, or only one of the client pair.
        """
        folder = self.cert_path or Path()
        ca, cert, key = (folder / name for name in TLS_FILES)
        if not ca.is_file():
            raise ConfigError(
                f"TLS to {self.docker_host}: no ca.pem in {folder} (cert_path / DOCKER_CERT_PATH must name a "
                "folder with ca.pem, and cert.pem and key.pem for a client certificate)"
            )
        if cert.is_file() != key.is_file():
            missing = "key.pem" if cert.is_file() else "cert.pem"
            raise ConfigError(f"TLS to {self.docker_host}: {folder} has a client certificate pair without {missing}")
        return (ca, cert, key) if cert.is_file() else (ca, None, None)

    def client_environment(self) -> dict[str, str]:
        """The ``DOCKER_*`` variables that make the docker CLI and Compose reach this engine.

        Replace every one of :data:`CLIENT_VARIABLES` with these: a ``DOCKER_CONTEXT`` or a stray
        ``DOCKER_CERT_PATH`` left in place could point them elsewhere.
        """
        env = {"DOCKER_HOST": self.docker_host}
        if self.tls_verify:
            env["DOCKER_TLS_VERIFY"] = "1"
            env["DOCKER_CERT_PATH"] = str(self.cert_path)
        return env


def parse_tls_verify(raw: str) -> bool:
    """``DOCKER_TLS_VERIFY`` as Docker reads it: on when set to anything, off when empty.

    Raises:
        ValueError: a value such as ``0`` or ``false``, which every Docker tool reads as *on*;
            saying so beats a gateway that quietly disagrees with the CLIs it runs.
    """
    if raw.strip().lower() in _FALSE_WORDS:
        raise ValueError(
            f"DOCKER_TLS_VERIFY={raw[:20]!r} turns TLS on in every Docker tool (any value does); "
            "unset it for a connection without TLS"
        )
    return raw != ""

"""The hosts of a fleet as ``config.json`` names them: more Docker engines beside the gateway's own.

::

    {"hosts": {
       "edge": {"docker_host": "tcp://10.0.0.5:2376", "tls_verify": true,
                "cert_path": "/etc/compose-agent/edge", "stacks_dir": "/srv/stacks/edge"},
       "lab":  {"docker_host": "ssh://deploy@10.0.0.6", "stacks_dir": "/srv/stacks/lab", "read_only": true}
    }}

The engine the gateway starts with (``DOCKER_HOST``, or the local socket) is the host ``local``;
no configured host may take that name. Validated here, at the edge, with messages that say what
to write instead; :mod:`gateway.fleet` turns the result into operations.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator, model_validator

from .engine.endpoint import parse_docker_host

__all__ = ["HostConfig", "LOCAL_HOST", "HOST_NAME", "MAX_HOSTS", "check_hosts"]

LOCAL_HOST = "local"
# A host's name reads like a stack's: it travels in scopes (compose:write:edge/site) and resource URIs.
HOST_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
MAX_HOSTS = 32
_LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})
_KEYS = ("docker_host", "tls_verify", "cert_path", "stacks_dir", "read_only")


class HostConfig(BaseModel):
    """One engine of the fleet: where it is, how to trust it, where its stacks' folders are."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    docker_host: str = Field(description="tcp://HOST:2376 (with tls_verify), ssh://user@host, or unix://PATH")
    tls_verify: StrictBool = Field(default=False, description="Verify the engine's TLS certificate (tcp:// only)")
    cert_path: Path | None = Field(default=None, description="A folder with ca.pem, cert.pem and key.pem")
    stacks_dir: Path = Field(description="This gateway's folder of the stacks it runs on that engine")
    read_only: StrictBool = Field(default=False, description="Refuse every write on this host")

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise ValueError(f"a host is an object with the keys {', '.join(_KEYS)}")
        unknown = sorted(str(key)[:40] for key in data if key not in _KEYS)
        if unknown:
            raise ValueError(
                f"unknown key(s) {', '.join(repr(k) for k in unknown)}; a host takes {', '.join(_KEYS)} "
                "(docker_host and stacks_dir are required)"
            )
        return data

    @field_validator("docker_host")
    @classmethod
    def _address(cls, value: str) -> str:
        parse_docker_host(value)  # its ValueError says what a DOCKER_HOST looks like
        return value

    @field_validator("stacks_dir", "cert_path")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        # The gateway's working directory is no place to guess from: a relative folder is a mistake.
        if value is not None and not value.is_absolute():
            raise ValueError(f"{str(value)[:100]!r} must be an absolute path on the gateway's machine")
        return value

    @model_validator(mode="after")
    def _tls(self) -> HostConfig:
        address = parse_docker_host(self.docker_host)
        scheme = address.scheme
        if self.tls_verify and scheme != "tcp":
            raise ValueError(f"tls_verify applies to a tcp:// docker_host, not {scheme}://; remove it")
        if self.tls_verify and self.cert_path is None:
            raise ValueError("tls_verify needs cert_path: a folder with ca.pem, cert.pem and key.pem")
        if self.cert_path is not None and not self.tls_verify:
            raise ValueError("cert_path is read only with tls_verify: true; set it, or remove cert_path")
        if scheme == "tcp" and not self.tls_verify and address.host not in _LOOPBACK:
            # Anyone on the path to a plain tcp:// engine is root on it: only one on this machine may go without TLS.
            raise ValueError(
                "a tcp:// engine on another machine needs tls_verify: true and cert_path (plain TCP gives its root "
                "to anyone on the path); or use ssh://"
            )
        return self


def check_hosts(hosts: dict[str, HostConfig]) -> dict[str, HostConfig]:
    """The hosts, if their names are usable and not ``local``; else ``ValueError`` saying what to change."""
    if len(hosts) > MAX_HOSTS:
        raise ValueError(f"at most {MAX_HOSTS} hosts, not {len(hosts)}")
    for name in hosts:
        if not HOST_NAME.fullmatch(name):
            raise ValueError(
                f"host name {name[:70]!r} is not allowed; use lowercase letters, digits, '-' and '_', "
                "starting with a letter or digit, at most 63"
            )
        if name == LOCAL_HOST:
            raise ValueError("'local' is the engine the gateway starts with (DOCKER_HOST); give this host another name")
    return hosts

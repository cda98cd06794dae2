"""The hosts of config.json, checked at the edge: what is refused, and what the message says to do."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway.config import Settings, load_settings
from gateway.errors import ConfigError, InvalidInput, PolicyViolation
from gateway.fleet import Fleet
from gateway.metrics import ControlPlane
from gateway.operations import ComposeOperations


def settings_with(tmp_path: Path, hosts: Any) -> Settings:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"hosts": hosts}))
    return load_settings({"CONFIG_PATH": str(config), "COMPOSE_AGENT_STATE_DIR": str(tmp_path / "state")})


def tls_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "tls"
    folder.mkdir(exist_ok=True)
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (folder / name).write_text("not read until the first call\n")
    return folder


def test_a_host_takes_the_keys_of_the_issue(tmp_path: Path) -> None:
    certs = tls_folder(tmp_path)
    settings = settings_with(
        tmp_path,
        {
            "edge": {
                "docker_host": "tcp://10.0.0.5:2376",
                "tls_verify": True,
                "cert_path": str(certs),
                "stacks_dir": "/srv/e",
            },
            "lab": {"docker_host": "ssh://deploy@10.0.0.6", "stacks_dir": "/srv/lab", "read_only": True},
        },
    )
    assert settings.hosts["edge"].tls_verify and settings.hosts["edge"].cert_path == certs
    assert settings.hosts["lab"].read_only and settings.hosts["lab"].stacks_dir == Path("/srv/lab")
    assert not settings.hosts["edge"].read_only
    # Plain TCP only to an engine API on this machine (a socket proxy on loopback).
    proxy = settings_with(tmp_path, {"proxy": {"docker_host": "tcp://127.0.0.1:2375", "stacks_dir": "/srv/p"}})
    assert not proxy.hosts["proxy"].tls_verify
    assert load_settings({"CONFIG_PATH": str(tmp_path / "none.json")}).hosts == {}


@pytest.mark.parametrize(
    ("hosts", "says"),
    [
        ({"local": {"docker_host": "ssh://a@b", "stacks_dir": "/s"}}, "give this host another name"),
        ({"Edge": {"docker_host": "ssh://a@b", "stacks_dir": "/s"}}, "host name 'Edge' is not allowed"),
        ({"a/b": {"docker_host": "ssh://a@b", "stacks_dir": "/s"}}, "lowercase letters"),
        ({"edge": {"docker_host": "ssh://a@b", "stacks_dir": "/s", "tls": True}}, "unknown key(s) 'tls'; a host takes"),
        ({"edge": {"stacks_dir": "/s"}}, "hosts.edge.docker_host"),
        ({"edge": {"docker_host": "ssh://a@b"}}, "hosts.edge.stacks_dir"),
        ({"edge": {"docker_host": "ssh://a@b", "stacks_dir": "stacks"}}, "must be an absolute path"),
        ({"edge": {"docker_host": "ftp://a", "stacks_dir": "/s"}}, "hosts.edge.docker_host"),
        ({"edge": {"docker_host": "tcp://10.0.0.5:2375", "stacks_dir": "/s"}}, "needs tls_verify: true"),
        ({"edge": {"docker_host": "tcp://edge.example:2375", "stacks_dir": "/s"}}, "or use ssh://"),
        ({"edge": {"docker_host": "tcp://10.0.0.5:2376", "tls_verify": True, "stacks_dir": "/s"}}, "needs cert_path"),
        ({"edge": {"docker_host": "ssh://a@b", "tls_verify": True, "cert_path": "/c", "stacks_dir": "/s"}}, "tcp://"),
        ({"edge": {"docker_host": "ssh://a@b", "stacks_dir": "/s", "read_only": "yes"}}, "read_only"),
        ({"edge": {"docker_host": "ssh://a@b", "stacks_dir": "/s", "cert_path": "/c"}}, "read only with tls_verify"),
        ({"edge": "ssh://a@b"}, "a host is an object"),
        (["edge"], "hosts (from"),
    ],
)
def test_a_bad_host_is_refused_saying_what_to_write(tmp_path: Path, hosts: Any, says: str) -> None:
    with pytest.raises(ConfigError) as refused:
        settings_with(tmp_path, hosts)
    assert says in str(refused.value)
    assert str(tmp_path / "config.json") in str(refused.value)


def test_too_many_hosts_are_refused(tmp_path: Path) -> None:
    hosts = {f"h{i}": {"docker_host": "ssh://a@b", "stacks_dir": f"/s/{i}"} for i in range(33)}
    with pytest.raises(ConfigError, match="at most 32 hosts"):
        settings_with(tmp_path, hosts)


def test_a_host_is_resolved_by_name_and_a_read_only_one_refuses_writes(tmp_path: Path) -> None:
    settings = settings_with(
        tmp_path,
        {
            "lab": {"docker_host": "ssh://deploy@192.0.2.6", "stacks_dir": str(tmp_path / "lab")},
            "vault": {"docker_host": "ssh://deploy@192.0.2.7", "stacks_dir": str(tmp_path / "v"), "read_only": True},
        },
    )
    local = ComposeOperations.from_settings(settings, plane=ControlPlane.COMPOSE_AGENT, environ={"PATH": "/usr/bin"})
    fleet = Fleet.from_settings(settings, local, plane=ControlPlane.COMPOSE_AGENT, environ={"PATH": "/usr/bin"})
    try:
        assert fleet.names == ["local", "lab", "vault"]
        assert fleet.get(None) is local and fleet.get("local") is local
        lab = fleet.get("lab")
        assert lab.engine.name == "lab" and lab.stacks_dir == tmp_path / "lab"
        # Each host its own engine and guard; one set of running commands and one metrics for all.
        assert lab.engine is not local.engine and lab.catalog.guard is not local.catalog.guard
        assert lab.lifecycle.running is local.lifecycle.running and lab.metrics is local.metrics
        assert fleet.writable("lab", "up") is lab
        with pytest.raises(PolicyViolation, match="the host 'vault' is read-only"):
            fleet.writable("vault", "down")
        with pytest.raises(InvalidInput, match="no host named 'edge'; known hosts: local, lab, vault"):
            fleet.get("edge")
    finally:
        fleet.close()

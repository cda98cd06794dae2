"""An engine's connection settings read as Docker reads them, its breaker, and the ssh command lines it makes.

No engine is needed here: these are the rules, each with the case that would break it. The
transports themselves are tested on real engines (test_engine_remote.py, test_engine_served.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.config import load_settings
from gateway.engine import ssh as ssh_module
from gateway.engine.breaker import Breaker
from gateway.engine.client import Engine
from gateway.engine.endpoint import Address, EngineEndpoint, parse_docker_host
from gateway.errors import ConfigError, EngineUnavailable
from gateway.metrics import ControlPlane
from gateway.operations import ComposeOperations


@pytest.mark.parametrize(
    ("value", "address"),
    [
        ("unix:///var/run/docker.sock", Address("unix", path="/var/run/docker.sock")),
        ("tcp://10.0.0.5:2376", Address("tcp", host="10.0.0.5", port=2376)),
        ("tcp://edge.example", Address("tcp", host="edge.example")),
        ("tcp://[fd00::5]:2376", Address("tcp", host="fd00::5", port=2376)),
        ("ssh://deploy@10.0.0.6", Address("ssh", host="10.0.0.6", user="deploy")),
        ("ssh://lab:2222", Address("ssh", host="lab", port=2222)),
        (
            "ssh://me@lab/run/user/1000/docker.sock",
            Address("ssh", host="lab", user="me", path="/run/user/1000/docker.sock"),
        ),
    ],
)
def test_docker_host_takes_the_forms_every_docker_tool_takes(value: str, address: Address) -> None:
    assert parse_docker_host(value) == address


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("/var/run/docker.sock", "must be unix:///path"),
        ("http://10.0.0.5:2375", "must be unix:///path"),
        ("npipe:////./pipe/docker_engine", "must be unix:///path"),
        ("unix://relative.sock", "absolute socket path"),
        ("tcp://:2376", "names no usable host"),
        ("tcp://10.0.0.5:99999", "port of DOCKER_HOST"),
        ("tcp://user@10.0.0.5:2376", "no user or path"),
        ("tcp://10.0.0.5:2376?x=1", "no password, query or fragment"),
        ("ssh://user:secret@lab", "no password"),
        # Read by ssh's option parser or the remote shell, these would be commands, not names.
        ("ssh://-oProxyCommand=touch%20x@lab", "user of an ssh://"),
        ("ssh://-oProxyCommand=x", "names no usable host"),
        ("ssh://lab/tmp/d.sock;reboot", "socket path of an ssh://"),
        ("ssh://lab/tmp/$(reboot)", "socket path of an ssh://"),
    ],
)
def test_docker_host_refuses_what_it_cannot_use_and_says_what_it_takes(value: str, says: str) -> None:
    with pytest.raises(ValueError, match=says.replace("(", r"\(").replace("?", r"\?")):
        parse_docker_host(value)
    with pytest.raises(ConfigError):
        EngineEndpoint(value)


def _tls_folder(folder: Path, *names: str) -> Path:
    folder.mkdir()
    for name in names:
        (folder / name).write_text("not read here\n")
    return folder


def test_tls_needs_a_tcp_host_a_ca_and_both_halves_of_a_client_pair(tmp_path: Path) -> None:
    full = _tls_folder(tmp_path / "full", "ca.pem", "cert.pem", "key.pem")
    assert EngineEndpoint("tcp://edge:2376", tls_verify=True, cert_path=full).tls_files()[1] == full / "cert.pem"
    ca_only = _tls_folder(tmp_path / "ca-only", "ca.pem")
    assert EngineEndpoint("tcp://edge:2376", tls_verify=True, cert_path=ca_only).tls_files() == (
        ca_only / "ca.pem",
        None,
        None,
    )
    with pytest.raises(ConfigError, match="applies to a tcp:// engine"):
        EngineEndpoint("ssh://lab", tls_verify=True, cert_path=full)
    with pytest.raises(ConfigError, match="no ca.pem in"):
        EngineEndpoint("tcp://edge:2376", tls_verify=True, cert_path=_tls_folder(tmp_path / "none"))
    with pytest.raises(ConfigError, match="without key.pem"):
        EngineEndpoint(
            "tcp://edge:2376", tls_verify=True, cert_path=_tls_folder(tmp_path / "half", "ca.pem", "cert.pem")
        )
    with pytest.raises(ConfigError, match="positive number of seconds"):
        EngineEndpoint(timeout=0)


def test_the_standard_variables_make_the_endpoint_as_the_docker_cli_reads_them(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    _tls_folder(home / ".docker", "ca.pem")
    certs = _tls_folder(tmp_path / "certs", "ca.pem", "cert.pem", "key.pem")
    tls = {"DOCKER_HOST": "tcp://edge:2376", "DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(certs)}
    assert EngineEndpoint.from_environ(tls) == EngineEndpoint("tcp://edge:2376", tls_verify=True, cert_path=certs)
    # Without DOCKER_CERT_PATH, ~/.docker; with TLS variables set for a Unix socket, no TLS (as the CLI).
    mine = {"DOCKER_HOST": "tcp://edge:2376", "DOCKER_TLS_VERIFY": "yes", "HOME": str(home)}
    assert EngineEndpoint.from_environ(mine).cert_path == home / ".docker"
    assert EngineEndpoint.from_environ({"DOCKER_TLS_VERIFY": "1"}) == EngineEndpoint()
    with pytest.raises(ConfigError, match="turns TLS on in every Docker tool"):
        EngineEndpoint.from_environ({"DOCKER_HOST": "tcp://edge:2376", "DOCKER_TLS_VERIFY": "0"})


def test_the_gateway_settings_read_the_tls_variables_and_compose_gets_the_engines_own(tmp_path: Path) -> None:
    certs = _tls_folder(tmp_path / "certs", "ca.pem", "cert.pem", "key.pem")
    environ = {
        "PATH": os.environ["PATH"],
        "DOCKER_HOST": "tcp://edge.example:2376",
        "DOCKER_TLS_VERIFY": "1",
        "DOCKER_CERT_PATH": str(certs),
        "DOCKER_CONTEXT": "somewhere-else",
    }
    settings = load_settings(environ, stacks_dir=tmp_path)
    assert (settings.docker_host, settings.docker_tls_verify, settings.docker_cert_path) == (
        "tcp://edge.example:2376",
        True,
        certs,
    )
    with pytest.raises(ConfigError, match=r"docker_tls_verify \(from environment variable DOCKER_TLS_VERIFY\)"):
        load_settings({**environ, "DOCKER_TLS_VERIFY": "false"}, stacks_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"docker_host \(from environment variable DOCKER_HOST\)"):
        load_settings({**environ, "DOCKER_HOST": "10.0.0.5:2376"}, stacks_dir=tmp_path)
    # The certificates are not real ones: the endpoint is made, and fails only when it is used.
    with pytest.raises(ConfigError, match="cannot load"):
        ComposeOperations.from_settings(settings, plane=ControlPlane.COMPOSE_AGENT, environ=environ)


def test_the_cli_environment_is_the_engines_whatever_the_gateway_inherited() -> None:
    engine = Engine("tcp://127.0.0.1:2375")
    inherited = {"PATH": "/usr/bin", "DOCKER_CONTEXT": "elsewhere", "DOCKER_TLS_VERIFY": "1", "DOCKER_CONFIG": "/c"}
    assert engine.cli_environment(inherited) == {
        "PATH": "/usr/bin",
        "DOCKER_CONFIG": "/c",
        "DOCKER_HOST": "tcp://127.0.0.1:2375",
    }
    engine.close()


def test_the_ssh_command_adds_batch_mode_a_timeout_and_its_own_multiplexing_unless_the_user_has_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ssh_module, "_user_multiplexes", lambda ssh, target: False)
    plan = ssh_module.plan_ssh(parse_docker_host("ssh://deploy@lab:2222/run/docker.sock"), timeout=4.2, ssh="/bin/ssh")
    try:
        assert plan.folder is not None and plan.folder.stat().st_mode & 0o777 == 0o700
        assert plan.argv == [
            "/bin/ssh",
            "-o",
            "ControlMaster=auto",
            "-o",
            f"ControlPath={plan.folder}/%C",
            "-o",
            "ControlPersist=60",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=5",
            "-o",
            "ServerAliveInterval=15",
            "-o",
            "ServerAliveCountMax=3",
            "-T",
            "-l",
            "deploy",
            "-p",
            "2222",
            "--",
            "lab",
            "docker",
            "--host=unix:///run/docker.sock",
            "system",
            "dial-stdio",
        ]
        cli_ssh = (plan.folder / "bin" / "ssh").read_text()
        assert f"ControlPath={plan.folder}/%C" in cli_ssh and cli_ssh.rstrip().endswith('"$@"')
        assert plan.cli_path("/usr/bin").split(os.pathsep) == [str(plan.folder / "bin"), "/usr/bin"]
    finally:
        folder = plan.folder
        plan.close()
    assert folder is not None and not folder.exists()

    monkeypatch.setattr(ssh_module, "_user_multiplexes", lambda ssh, target: True)
    theirs = ssh_module.plan_ssh(parse_docker_host("ssh://lab"), timeout=10, ssh="/bin/ssh")
    assert theirs.folder is None and not any("Control" in part for part in theirs.argv)
    assert theirs.cli_path("/usr/bin") == "/usr/bin"


def test_an_ssh_engine_without_an_ssh_client_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ConfigError, match="needs the OpenSSH client"):
        Engine("ssh://lab")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_breaker_fails_fast_after_a_failure_and_lets_one_call_try_after_a_doubling_backoff() -> None:
    clock = Clock()
    breaker = Breaker("edge", first=1.0, cap=4.0, clock=clock, wall=clock)
    assert breaker.admit() is False and breaker.state.status == "up"
    assert breaker.failed("cannot reach the Docker engine 'edge' (no answer within 2 s)") is True
    state = breaker.state
    assert (state.status, state.since, state.retry_in) == ("degraded", 1000.0, 1.0)
    with pytest.raises(
        EngineUnavailable, match=r"no answer within 2 s\) \[engine 'edge' degraded since .*next try in 1.0 s"
    ):
        breaker.admit()

    clock.now += 1.0
    assert breaker.admit() is True  # this call tries the engine again
    with pytest.raises(EngineUnavailable, match="being tried again now"):
        breaker.admit()  # and no other call meanwhile
    assert breaker.failed("still nothing") is False
    breaker.settle(True)
    assert breaker.state.since == 1000.0  # degraded since the first failure, not the latest
    clock.now += 1.5
    with pytest.raises(EngineUnavailable, match="still nothing"):
        breaker.admit()  # the wait doubled to 2 s
    clock.now += 0.5
    trying = breaker.admit()
    breaker.settle(trying)  # cancelled: neither answered nor failed, the slot is free again
    assert breaker.admit() is True
    breaker.succeeded()
    breaker.settle(True)
    assert breaker.state.status == "up" and breaker.admit() is False
    breaker.failed("again")
    assert breaker.state.retry_in == 1.0  # an engine that answered starts the backoff over
    assert breaker.state.as_dict()["since"].endswith("Z")

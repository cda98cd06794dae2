"""The command line: help, configuration errors, env/flag precedence, and the status endpoint over HTTP."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.conftest import free_port
from watchdog.__main__ import build_parser, load_config

from .conftest import Targets, wait_until

pytestmark = pytest.mark.anyio


def cli() -> list[str]:
    path = shutil.which("compose-watchdog")
    if path is None:
        pytest.fail("the compose-watchdog console script is not installed (pip install -e .)")
    return [path]


def test_run_help_lists_every_flag_and_its_environment_variable() -> None:
    result = subprocess.run([*cli(), "run", "--help"], capture_output=True, text=True, check=True, timeout=30)
    for flag, var in [
        ("--target", "WATCHDOG_TARGET"),
        ("--check-interval", "WATCHDOG_CHECK_INTERVAL"),
        ("--initial-delay", "WATCHDOG_INITIAL_DELAY"),
        ("--backoff-multiplier", "WATCHDOG_BACKOFF_MULTIPLIER"),
        ("--max-restart-attempts", "WATCHDOG_MAX_RESTART_ATTEMPTS"),
        ("--status-port", "WATCHDOG_STATUS_PORT"),
        ("--status-host", "WATCHDOG_STATUS_HOST"),
    ]:
        assert flag in result.stdout and var in result.stdout
    assert "initial-delay * backoff-multiplier**(n-1)" in result.stdout


def test_python_dash_m_watchdog_works_from_any_directory(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "watchdog", "--version"], cwd=tmp_path, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0 and result.stdout.startswith("compose-watchdog ")


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--check-interval", "0"], {}, "--check-interval 0.0: Input should be greater than 0"),
        (["--backoff-multiplier", "0.5"], {}, "--backoff-multiplier 0.5: Input should be greater than or equal to 1"),
        (["--max-restart-attempts", "many"], {}, "argument --max-restart-attempts: invalid int value: 'many'"),
        ([], {"WATCHDOG_INITIAL_DELAY": "-3"}, "WATCHDOG_INITIAL_DELAY='-3': Input should be greater than or equal"),
        ([], {"WATCHDOG_STATUS_PORT": "70000"}, "WATCHDOG_STATUS_PORT='70000': Input should be less than or equal"),
        (["--target", "bad name!"], {}, "--target bad name!: String should match pattern"),
    ],
)
def test_a_bad_value_is_a_clear_error_with_exit_code_2(args: list[str], env: dict[str, str], message: str) -> None:
    result = subprocess.run(
        [*cli(), "run", *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_flags_win_over_the_environment_which_wins_over_the_defaults() -> None:
    args = build_parser().parse_args(["run", "--check-interval", "2", "--status-port", "9000"])
    env = {"WATCHDOG_CHECK_INTERVAL": "7", "WATCHDOG_TARGET": "other", "WATCHDOG_STATUS_PORT": "9001"}
    config = load_config(args, env)
    assert config.check_interval_secs == 2
    assert config.target_container == "other"
    assert config.status_port == 9000
    assert config.initial_delay_secs == 10 and config.max_restart_attempts == 5
    assert config.status_host == "127.0.0.1"
    assert config.stable_period == 20, "the default stable period follows the check interval"


def test_the_watchdog_imports_nothing_from_the_gateway_or_the_status_panel() -> None:
    code = (
        "import sys, watchdog, watchdog.__main__\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('gateway', 'statuspanel'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


def get_json(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, json.loads(response.read())
    except (urllib.error.URLError, ConnectionError):
        return 0, None


@pytest.mark.docker
async def test_status_answers_over_http_and_sigterm_stops_cleanly(targets: Targets, tmp_path: Path) -> None:
    target = targets.run().name
    port = free_port()
    log = tmp_path / "watchdog.log"
    with log.open("w") as stderr:
        proc = subprocess.Popen(
            [*cli(), "run", "--target", target, "--status-port", str(port), "--check-interval", "0.5"],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env={**os.environ, "WATCHDOG_INITIAL_DELAY": "0.2"},
        )
    try:
        base = f"http://127.0.0.1:{port}"
        answers: dict[str, Any] = {}

        def status_is_healthy() -> bool:
            code, body = get_json(f"{base}/status")
            answers["status"] = body
            return code == 200 and body["state"] == "Healthy"

        await wait_until(status_is_healthy, 15, "/status to answer Healthy")
        status = answers["status"]
        assert set(status) == {
            "target",
            "state",
            "reason",
            "restart_attempts",
            "next_restart_in_s",
            "last_transition_at",
        }
        assert status["target"] == target and status["restart_attempts"] == 0
        assert status["next_restart_in_s"] is None and status["last_transition_at"]
        assert await anyio.to_thread.run_sync(get_json, f"{base}/health") == (200, {"status": "ok"})

        await anyio.to_thread.run_sync(lambda: targets.client.api.kill(target))
        await wait_until(
            lambda: get_json(f"{base}/status")[1]["restart_attempts"] == 1, 10, "the restart to show in /status"
        )
        proc.send_signal(signal.SIGTERM)
        assert await anyio.to_thread.run_sync(lambda: proc.wait(timeout=10)) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "event=transition" in text and "state=Unhealthy" in text and "event=restart" in text
    assert "event=watchdog_stopped" in text
    assert "Traceback" not in text


def test_a_taken_status_port_is_a_clear_error_with_exit_code_1() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = subprocess.run(
            [*cli(), "run", "--target", "nothing-here", "--status-port", str(port)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port} for the status endpoint" in result.stderr
    assert "Traceback" not in result.stderr

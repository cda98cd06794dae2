"""`compose-agent` as a person runs it: help, the start-up banner, and where generated tokens go."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.gateway.conftest import stop_process, wait_for_health

pytestmark = pytest.mark.docker


def serve_without_tokens(tmp_path: Path, stderr: int) -> tuple[subprocess.Popen[bytes], str, Path]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_TOKEN") and not k.startswith("VAULT_")}
    state = tmp_path / "state"
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--port", str(port), "--stacks-dir", str(tmp_path)],
        env={**env, "COMPOSE_AGENT_STATE_DIR": str(state), "CONFIG_PATH": str(tmp_path / "none.json")},
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )
    base = f"http://127.0.0.1:{port}"
    wait_for_health(base, process)
    return process, base, state / "tokens.json"


def test_generated_tokens_and_client_config_are_printed_at_a_terminal(tmp_path: Path) -> None:
    leader, follower = pty.openpty()
    process, base, token_file = serve_without_tokens(tmp_path, follower)
    os.close(follower)
    try:
        tokens = json.loads(token_file.read_text())
        assert token_file.stat().st_mode & 0o777 == 0o600
        wanted = [
            tokens["status_panel_token"].encode(),
            f'"Authorization": "Bearer {tokens["compose_agent_token"]}"'.encode(),
        ]
        output = b""
        deadline = time.monotonic() + 15
        # Other log lines may come before or after the banner; read until everything wanted is there.
        while not all(w in output for w in wanted):
            remaining = deadline - time.monotonic()
            assert remaining > 0, output.decode(errors="replace")
            ready, _, _ = select.select([leader], [], [], remaining)
            if ready:
                output += os.read(leader, 65536)
        text = output.decode()
        assert tokens["compose_agent_token"] in text and tokens["status_panel_token"] in text
        assert f'"url": "{base}/mcp"' in text
        assert f'"Authorization": "Bearer {tokens["compose_agent_token"]}"' in text
        assert '"--transport",' in text and '"stdio",' in text
    finally:
        stop_process(process)
        os.close(leader)


def test_generated_tokens_stay_out_of_a_non_terminal_stderr(tmp_path: Path) -> None:
    log = tmp_path / "stderr.log"
    with log.open("wb") as err:
        process, _, token_file = serve_without_tokens(tmp_path, err.fileno())
    try:
        tokens = json.loads(token_file.read_text())
    finally:
        stop_process(process)
    text = log.read_text()
    assert str(token_file) in text and "not printed" in text
    assert all(secret not in text for secret in tokens.values())
    # The panel's copy holds its own token and nothing else.
    shared = token_file.parent / "panel" / "tokens.json"
    assert json.loads(shared.read_text()) == {"status_panel_token": tokens["status_panel_token"]}
    assert shared.stat().st_mode & 0o777 == 0o600


def test_help_names_the_commands_and_flags() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for flag in ("--transport", "--host", "--port", "--stacks-dir", "--read-only"):
        assert flag in out
    bad = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--transport", "carrier-pigeon"], capture_output=True
    )
    assert bad.returncode == 2 and b"invalid choice" in bad.stderr


def test_a_bad_configuration_exits_non_zero_saying_what_is_wrong(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"control_plane": "elsewhere"}')
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--port", str(free_port())],
        env={**os.environ, "CONFIG_PATH": str(tmp_path / "config.json")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "control_plane" in done.stderr and "compose_agent" in done.stderr

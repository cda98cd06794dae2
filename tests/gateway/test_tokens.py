"""Token sources, start-up loading and rotation without restart, against a real OpenBao dev server."""

from __future__ import annotations

import json
import logging
import secrets
import stat
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import anyio
import pytest

from gateway.auth.principals import COMPOSE_AGENT, STATUS_PANEL, TokenStore
from gateway.auth.tokens import (
    EnvTokenSource,
    GeneratedTokenSource,
    VaultTokenSource,
    load_initial_tokens,
    refresh_tokens_forever,
    token_source_from_settings,
)
from gateway.auth.vault import VaultClient
from gateway.config import Settings, load_settings
from gateway.errors import ConfigError, VaultError
from tests.conftest import free_port
from tests.gateway import vault_fixtures
from tests.gateway.vault_fixtures import OpenBao, fresh_hash, start_openbao

pytestmark = [pytest.mark.anyio, pytest.mark.vault]

# The session-wide OpenBao dev server (a fixture; assigned rather than imported so ruff sees no shadowing).
openbao = vault_fixtures.openbao


Background = Callable[[Callable[[], Coroutine[Any, Any, None]]], None]


def _settings(tmp_path: Path, **env: str) -> Settings:
    base = {"CONFIG_PATH": str(tmp_path / "absent.json"), "COMPOSE_AGENT_STATE_DIR": str(tmp_path)}
    return load_settings({**base, **env})


def _seed(bao: OpenBao, deployment: str) -> dict[str, str]:
    tokens = {key: secrets.token_urlsafe(16) for key in ("compose_agent_token", "status_panel_token")}
    for key, value in tokens.items():
        bao.write_token(f"agent/{deployment}/{key}", value)
    return tokens


async def _until(condition: Callable[[], bool], timeout: float = 10) -> None:
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.02)


async def refreshing_from_vault(bao: OpenBao, background: Background) -> tuple[str, dict[str, str], TokenStore]:
    """Seed both tokens of a fresh deployment in ``bao``, load them, and refresh them every 0.2 s from then on.

    Returns the deployment's hash, the seeded tokens and the store they were loaded into.
    """
    deployment = fresh_hash()
    seeded = _seed(bao, deployment)
    source = VaultTokenSource(VaultClient(bao.address, bao.root_token), deployment)
    store = TokenStore()
    await load_initial_tokens(source, store, timeout=5)
    background(lambda: refresh_tokens_forever(source, store, interval=0.2))
    return deployment, seeded, store


@pytest.fixture
async def background() -> AsyncIterator[Background]:
    """Run coroutines in a task group that is cancelled when the test ends."""
    async with anyio.create_task_group() as tg:

        def start(func: Callable[[], Coroutine[Any, Any, None]]) -> None:
            tg.start_soon(func)

        yield start
        tg.cancel_scope.cancel()


# Choosing a source.


def test_vault_is_chosen_when_its_address_is_set_even_with_env_tokens(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path,
        VAULT_ADDRESS="http://127.0.0.1:8200",
        VAULT_TOKEN="vt",
        DEPLOYMENT_HASH="abc123",
        COMPOSE_AGENT_TOKEN="env-token",
    )

    source = token_source_from_settings(settings)

    assert isinstance(source, VaultTokenSource)
    assert "http://127.0.0.1:8200" in source.description and "secret/agent/abc123/" in source.description
    assert "vt" not in source.description.replace("http", "")


def test_vault_without_a_deployment_hash_is_a_config_error_naming_it(tmp_path: Path) -> None:
    settings = _settings(tmp_path, VAULT_ADDRESS="http://127.0.0.1:8200", VAULT_TOKEN="vt")

    with pytest.raises(ConfigError, match="DEPLOYMENT_HASH"):
        token_source_from_settings(settings)


def test_vault_without_a_vault_token_is_a_config_error_naming_it(tmp_path: Path) -> None:
    settings = _settings(tmp_path, VAULT_ADDRESS="http://127.0.0.1:8200", DEPLOYMENT_HASH="abc")

    with pytest.raises(ConfigError, match="VAULT_TOKEN"):
        token_source_from_settings(settings)


@pytest.mark.parametrize("var", ["COMPOSE_AGENT_TOKEN", "STATUS_PANEL_TOKEN"])
async def test_the_environment_is_chosen_when_either_token_is_set_and_gives_only_that_one(
    tmp_path: Path, var: str
) -> None:
    source = token_source_from_settings(_settings(tmp_path, **{var: "from-env"}))

    assert isinstance(source, EnvTokenSource)
    assert await source.fetch() == {var.lower(): "from-env"}
    assert "from-env" not in source.description


def test_the_generated_file_is_the_default(tmp_path: Path) -> None:
    source = token_source_from_settings(_settings(tmp_path))

    assert isinstance(source, GeneratedTokenSource)
    assert source.path == tmp_path / "tokens.json"


# The embedded default.


async def test_the_generated_file_is_private_and_reused_on_the_second_start(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first, store = GeneratedTokenSource(state), TokenStore()

    await load_initial_tokens(first, store, timeout=5)

    assert first.created
    assert stat.S_IMODE(first.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    generated = json.loads(first.path.read_text())
    assert set(generated) == {"compose_agent_token", "status_panel_token"}
    assert all(len(v) >= 40 for v in generated.values())
    assert store.identify(generated["compose_agent_token"]) == COMPOSE_AGENT
    assert store.identify(generated["status_panel_token"]) == STATUS_PANEL

    second = GeneratedTokenSource(state)
    assert await second.fetch() == generated
    assert not second.created


async def test_a_loosened_token_file_is_set_back_to_0600(tmp_path: Path) -> None:
    source = GeneratedTokenSource(tmp_path)
    await source.fetch()
    source.path.chmod(0o644)

    await GeneratedTokenSource(tmp_path).fetch()

    assert stat.S_IMODE(source.path.stat().st_mode) == 0o600


async def test_a_broken_token_file_fails_at_once_saying_where(tmp_path: Path) -> None:
    (tmp_path / "tokens.json").write_text('{"compose_agent_token": ')

    with pytest.raises(ConfigError, match=r"tokens.json is not valid JSON \(line 1"), anyio.fail_after(2):
        await load_initial_tokens(GeneratedTokenSource(tmp_path), TokenStore(), timeout=30)


async def test_the_env_source_without_tokens_fails_at_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="COMPOSE_AGENT_TOKEN"), anyio.fail_after(2):
        await load_initial_tokens(EnvTokenSource(None, None), TokenStore(), timeout=30)


async def test_editing_the_generated_file_rotates_without_restart(tmp_path: Path, background: Background) -> None:
    source, store = GeneratedTokenSource(tmp_path), TokenStore()
    await load_initial_tokens(source, store, timeout=5)
    old = source.tokens()["status_panel_token"]
    source.path.write_text(json.dumps({**source.tokens(), "status_panel_token": "edited-by-hand"}))

    background(lambda: refresh_tokens_forever(source, store, interval=0.2))

    await _until(lambda: store.identify("edited-by-hand") == STATUS_PANEL)
    assert store.identify(old) is None


# Vault.


async def test_both_tokens_load_from_the_seed_paths(openbao: OpenBao, tmp_path: Path) -> None:
    deployment = fresh_hash()
    seeded = _seed(openbao, deployment)
    settings = _settings(
        tmp_path, VAULT_ADDRESS=openbao.address, VAULT_TOKEN=openbao.root_token, DEPLOYMENT_HASH=deployment
    )
    store = TokenStore()

    await load_initial_tokens(token_source_from_settings(settings), store, timeout=5)

    assert store.identify(seeded["compose_agent_token"]) == COMPOSE_AGENT
    assert store.identify(seeded["status_panel_token"]) == STATUS_PANEL
    assert store.identify("anything else") is None


async def test_a_key_missing_in_vault_is_left_out(openbao: OpenBao) -> None:
    deployment = fresh_hash()
    openbao.write_token(f"agent/{deployment}/status_panel_token", "panel-only")
    source = VaultTokenSource(VaultClient(openbao.address, openbao.root_token), deployment)

    assert await source.fetch() == {"status_panel_token": "panel-only"}


async def test_start_up_waits_for_tokens_that_appear_before_the_timeout(
    openbao: OpenBao, background: Background, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.auth.tokens")
    deployment = fresh_hash()
    source = VaultTokenSource(VaultClient(openbao.address, openbao.root_token), deployment)
    store = TokenStore()
    loaded = anyio.Event()

    async def load() -> None:
        await load_initial_tokens(source, store, timeout=20)
        loaded.set()

    background(load)
    await _until(lambda: any("no tokens yet" in r.getMessage() for r in caplog.records))
    assert not loaded.is_set() and not store.configured
    openbao.write_token(f"agent/{deployment}/compose_agent_token", "late-token")

    with anyio.fail_after(10):
        await loaded.wait()
    assert store.identify("late-token") == COMPOSE_AGENT


async def test_start_up_times_out_naming_the_unreachable_vault(tmp_path: Path) -> None:
    address = f"http://127.0.0.1:{free_port()}"
    settings = _settings(tmp_path, VAULT_ADDRESS=address, VAULT_TOKEN="vault-token-xyz", DEPLOYMENT_HASH="abc123")
    store = TokenStore()

    with pytest.raises(VaultError) as caught, anyio.fail_after(10):
        await load_initial_tokens(token_source_from_settings(settings), store, timeout=1)

    assert address in str(caught.value)
    assert "within 1s" in str(caught.value)
    assert "vault-token-xyz" not in str(caught.value)
    assert not store.configured


async def test_start_up_with_no_secret_in_vault_times_out_naming_the_paths(openbao: OpenBao) -> None:
    deployment = fresh_hash()
    source = VaultTokenSource(VaultClient(openbao.address, openbao.root_token), deployment)

    with pytest.raises(VaultError, match=f"secret/agent/{deployment}/compose_agent_token"):
        await load_initial_tokens(source, TokenStore(), timeout=0.5)


async def test_a_rotation_in_vault_is_accepted_and_the_old_token_refused_without_restart(
    openbao: OpenBao,
    background: Background,
) -> None:
    deployment, seeded, store = await refreshing_from_vault(openbao, background)

    rotated = secrets.token_urlsafe(16)
    openbao.write_token(f"agent/{deployment}/compose_agent_token", rotated)

    await _until(lambda: store.identify(rotated) == COMPOSE_AGENT, timeout=5)
    assert store.identify(seeded["compose_agent_token"]) is None
    assert store.identify(seeded["status_panel_token"]) == STATUS_PANEL


async def test_deleting_one_secret_in_vault_revokes_that_token(openbao: OpenBao, background: Background) -> None:
    deployment, seeded, store = await refreshing_from_vault(openbao, background)

    openbao.delete_latest(f"agent/{deployment}/status_panel_token")

    await _until(lambda: store.identify(seeded["status_panel_token"]) is None, timeout=5)
    assert store.identify(seeded["compose_agent_token"]) == COMPOSE_AGENT


async def test_vault_stopped_mid_run_keeps_the_last_good_tokens_and_warns_without_a_token(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    background: Background,
) -> None:
    caplog.set_level(logging.DEBUG)
    with start_openbao(tmp_path) as bao:
        _, seeded, store = await refreshing_from_vault(bao, background)

        bao.stop()

        def warned() -> bool:
            return any(r.levelno == logging.WARNING and r.name == "gateway.auth.tokens" for r in caplog.records)

        await _until(warned, timeout=5)
        # Let a few more failed refreshes go by, then check nothing was dropped.
        await _until(lambda: sum(r.levelno == logging.WARNING for r in caplog.records) >= 3, timeout=5)

    assert store.identify(seeded["compose_agent_token"]) == COMPOSE_AGENT
    assert store.identify(seeded["status_panel_token"]) == STATUS_PANEL
    warning = next(r for r in caplog.records if r.levelno == logging.WARNING)
    assert bao.address in warning.getMessage() and "keeping the last good tokens" in warning.getMessage()
    secrets_in_play = [*seeded.values(), bao.root_token]
    for record in caplog.records:
        text = record.getMessage() + (str(record.exc_info) if record.exc_info else "")
        assert not any(s in text for s in secrets_in_play), record.getMessage()


# The refresh schedule, isolated from real time: record each wait instead of sleeping.


class _StopLoop(Exception):
    pass


Fetch = Callable[[], Awaitable[dict[str, str]]]


async def _waits(monkeypatch: pytest.MonkeyPatch, fetch: Fetch, n: int) -> list[float]:
    waits: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) > n:
            raise _StopLoop

    class Source:
        description = "a test source"

        async def fetch(self) -> dict[str, str]:
            return await fetch()

    # tokens.py calls anyio.sleep through the module, so this reaches it (and is undone after the test).
    monkeypatch.setattr(anyio, "sleep", fake_sleep)
    with pytest.raises(_StopLoop):
        await refresh_tokens_forever(Source(), TokenStore(), interval=60)
    return waits[:n]


async def test_jitter_only_shortens_the_refresh_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    async def ok() -> dict[str, str]:
        return {"status_panel_token": "t"}

    waits = await _waits(monkeypatch, ok, 200)

    assert all(48 <= w <= 60 for w in waits)
    assert len(set(waits)) > 100  # actually jittered


async def test_failures_back_off_up_to_the_interval_and_never_beyond(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def failing() -> dict[str, str]:
        raise VaultError("cannot reach Vault at http://vault.invalid:8200")

    waits = await _waits(monkeypatch, failing, 12)

    assert waits[1:8] == [1, 2, 4, 8, 16, 32, 60]
    assert max(waits) <= 60
    # One warning per failed read (n sleeps, n reads), each saying when the next try comes.
    assert sum(r.levelno == logging.WARNING for r in caplog.records) == 12

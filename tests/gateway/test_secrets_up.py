"""A stack's secrets from a real OpenBao at up: the containers get them, nothing the gateway keeps holds
them, and every way resolving can fail is an error naming the reference (never a value) before anything starts."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest

from gateway.compose.cli import ComposeCli
from gateway.config import load_settings
from gateway.errors import GatewayError, InvalidInput, PolicyRefused, SecretUnavailable
from gateway.metrics import ControlPlane
from gateway.operations import ComposeOperations
from gateway.policy.rules import Policy, StackRules
from tests.conftest import StackFactory, free_port, random_name
from tests.gateway.secrets_fixtures import (
    EXPECTED_LINES,
    SecretStack,
    leaks,
    new_value,
    secret_stack,
    vault_operations,
    vault_ops,
)
from tests.gateway.vault_fixtures import OpenBao, openbao

pytestmark = [pytest.mark.anyio, pytest.mark.docker]
__all__ = ["openbao", "vault_ops"]


def _stack(stacks: StackFactory, openbao: OpenBao, *, store: dict[str, str] | None = None) -> SecretStack:
    secret = secret_stack(new_value())
    if store is not None:
        openbao.request("POST", f"secret/data/{secret.path}", {"data": store})
    stacks.make(secret.compose(stacks.image), name=secret.name)
    return secret


async def _nothing_started(ops: ComposeOperations, name: str) -> None:
    assert await anyio.to_thread.run_sync(ops.engine.project_containers, name) == []
    assert ops.lifecycle.runs.kept(name) is None  # no run file written either


async def test_up_hands_the_secret_to_the_service_and_keeps_it_off_disk(
    vault_ops: ComposeOperations, stacks: StackFactory, openbao: OpenBao, tmp_path: Path
) -> None:
    secret = secret_stack(new_value())
    openbao.request("POST", f"secret/data/{secret.path}", {"data": {"db": secret.value}})
    name = stacks.make(secret.compose(stacks.image), name=secret.name)
    with anyio.fail_after(60):
        result = await vault_ops.up(name, wait=True)
    assert result.ok
    ps = await vault_ops.ps(name)
    assert [s.health for s in ps.services] == ["healthy"]  # the healthcheck compared the value's SHA-256
    run_file = vault_ops.lifecycle.runs.kept(name)
    assert run_file is not None and "${DB_PASSWORD}" in run_file.path.read_text()
    on_disk = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    assert leaks(on_disk.decode("utf-8", "replace"), secret.value) == []
    # The operations API returns what the service printed; the MCP edge redacts it (test_secrets_e2e).
    logs = await vault_ops.logs(name, tail=50)
    assert "dsn-before postgres://shop:" in logs.text
    # grep sees lines as they are shown: it is no oracle for guessing the secret a prefix at a time.
    for guess in (secret.value[:3], secret.value, "Pw"):
        guessed = await vault_ops.logs(name, tail=50, grep=f"plain-before {guess}")
        assert guessed.lines == 0, guess
    shown = await vault_ops.logs(name, tail=50, grep=r"plain-before \[redacted:DB_PASSWORD\] plain-after")
    assert shown.lines == 1
    await vault_ops.down(name)
    assert EXPECTED_LINES


async def test_a_missing_key_is_an_error_naming_the_reference_and_nothing_starts(
    vault_ops: ComposeOperations, stacks: StackFactory, openbao: OpenBao
) -> None:
    secret = _stack(stacks, openbao, store={"other": "not-this-one-1234"})
    with pytest.raises(SecretUnavailable) as caught:
        await vault_ops.up(secret.name)
    message = str(caught.value)
    assert f"secret DB_PASSWORD of stack '{secret.name}' (secret/{secret.path}#db)" in message
    assert "has no key 'db'" in message and "nothing was started" in message
    assert "not-this-one" not in message
    await _nothing_started(vault_ops, secret.name)


async def test_a_missing_path_is_an_error_naming_the_reference_and_nothing_starts(
    vault_ops: ComposeOperations, stacks: StackFactory, openbao: OpenBao
) -> None:
    secret = _stack(stacks, openbao)
    with pytest.raises(SecretUnavailable, match=rf"secret/{secret.path}#db.*no secret at secret/{secret.path}"):
        await vault_ops.up(secret.name)
    await _nothing_started(vault_ops, secret.name)


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("hunter2", "fewer than 8 characters"),
        ("aaaabbbb", "fewer than 4 distinct characters"),
        ("x1" * 40_000, "longer than 65536 characters"),
    ],
)
async def test_a_value_that_cannot_be_a_secret_is_refused(
    vault_ops: ComposeOperations, stacks: StackFactory, openbao: OpenBao, value: str, why: str
) -> None:
    secret = _stack(stacks, openbao, store={"db": value})
    with pytest.raises(SecretUnavailable, match=why) as caught:
        await vault_ops.up(secret.name)
    assert value[:7] not in str(caught.value)
    await _nothing_started(vault_ops, secret.name)


async def test_a_value_that_is_not_a_string_is_refused(
    vault_ops: ComposeOperations, stacks: StackFactory, openbao: OpenBao
) -> None:
    secret = secret_stack(new_value())
    openbao.request("POST", f"secret/data/{secret.path}", {"data": {"db": {"nested": "x" * 20}}})
    stacks.make(secret.compose(stacks.image), name=secret.name)
    with pytest.raises(SecretUnavailable, match="is not a string in Vault"):
        await vault_ops.up(secret.name)
    await _nothing_started(vault_ops, secret.name)


async def test_an_unreachable_vault_is_an_error_naming_the_reference_and_nothing_starts(
    stacks: StackFactory, openbao: OpenBao, tmp_path: Path
) -> None:
    secret = _stack(stacks, openbao, store={"db": new_value()})
    environ = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/root"),
        "COMPOSE_AGENT_STATE_DIR": str(tmp_path / "state"),
        "VAULT_ADDRESS": f"http://127.0.0.1:{free_port()}",  # nothing listens there
        "VAULT_TOKEN": "s.whatever",
    }
    settings = load_settings(environ, stacks_dir=stacks.root)
    ops = ComposeOperations.from_settings(settings, plane=ControlPlane.COMPOSE_AGENT, environ=environ)
    try:
        with pytest.raises(
            SecretUnavailable, match=rf"cannot read secret DB_PASSWORD .*secret/{secret.path}#db.*reach"
        ):
            await ops.up(secret.name)
        await _nothing_started(ops, secret.name)
    finally:
        ops.close()


async def test_without_vault_a_stack_with_references_is_refused_saying_so(
    ops: ComposeOperations, stacks: StackFactory, openbao: OpenBao
) -> None:
    secret = _stack(stacks, openbao, store={"db": new_value()})
    with pytest.raises(SecretUnavailable, match="no Vault configured: set VAULT_ADDRESS and VAULT_TOKEN"):
        await ops.up(secret.name)
    await _nothing_started(ops, secret.name)
    # A plan says the same: it would ask Compose about a model it cannot complete.
    with pytest.raises(SecretUnavailable, match="no Vault configured"):
        await ops.planner.plan(secret.name)


async def test_a_stack_reads_only_the_vault_paths_the_operator_gives_it(
    vault_ops: ComposeOperations, stacks: StackFactory, openbao: OpenBao, tmp_path: Path
) -> None:
    # Another stack's secret, in that stack's own folder: the default policy gives each stack its own.
    victim = secret_stack(new_value())
    openbao.request("POST", f"secret/data/{victim.path}", {"data": {"db": victim.value}})
    thief = SecretStack(random_name("thief"), victim.path, victim.value)
    name = stacks.make(thief.compose(stacks.image), name=thief.name)
    with pytest.raises(PolicyRefused) as caught:
        await vault_ops.up(name)
    message = str(caught.value)
    assert "vault_paths" in message and f"secret/{victim.path}, outside the Vault paths" in message
    assert f"secret/stacks/{name})" in message and f"policy.stacks.{name}.secret_paths" in message
    assert not leaks(message, victim.value)
    await _nothing_started(vault_ops, name)
    listed = {stack.name: stack for stack in (await vault_ops.list_stacks()).stacks}
    verdict = listed[name].policy
    assert verdict is not None and verdict.rules == ["vault_paths"]

    # The operator shares that path with this stack, and with nothing else.
    shared = Policy(stacks={name: StackRules(secret_paths=(f"secret/{victim.path}",))})
    with vault_operations(stacks, openbao, tmp_path / "shared", shared) as ops:
        with anyio.fail_after(60):
            assert (await ops.up(name, wait=True)).ok
        assert [s.health for s in (await ops.ps(name)).services] == ["healthy"]


async def test_a_reference_to_the_gateways_own_tokens_is_refused_even_where_the_operator_allows_any_path(
    stacks: StackFactory, openbao: OpenBao, tmp_path: Path
) -> None:
    openbao.write_token("agent/dhijack/compose_agent_token", "the-gateways-own-token-123")
    for reference in ("secret/agent/dhijack/compose_agent_token#token", "secret/agent#token"):
        block = f'x-compose-agent:\n  secrets:\n    STOLEN: "{reference}"\n'
        name = stacks.make(block + 'services:\n  app:\n    image: {image}\n    environment: {X: "${STOLEN}"}\n')
        anywhere = Policy(stacks={name: StackRules(allow=("vault_paths",))})
        with vault_operations(stacks, openbao, tmp_path / name, anywhere) as ops:
            with pytest.raises(SecretUnavailable, match="where the gateway keeps its own tokens") as caught:
                await ops.up(name)
            assert "the-gateways-own-token" not in str(caught.value)
            await _nothing_started(ops, name)


async def test_a_secret_in_a_command_is_refused_before_anything_runs(
    vault_ops: ComposeOperations, stacks: StackFactory, openbao: OpenBao
) -> None:
    compose = (
        # Two literals joined at run time: the suite's scan of ordinary compose files sees the services alone.
        'x-compose-agent:\n  secrets:\n    DB_PASSWORD: "secret/apps/x#db"\n'
        + "services:\n  app:\n    image: {image}\n    command: ['sh', '-c', 'echo ${DB_PASSWORD}']\n"
    )
    name = stacks.make(compose)
    with pytest.raises(InvalidInput, match=r"used at services\.app\.command \(DB_PASSWORD\)"):
        await vault_ops.up(name)
    await _nothing_started(vault_ops, name)


async def test_a_name_that_would_steer_compose_is_refused_before_compose_runs(
    vault_ops: ComposeOperations, stacks: StackFactory
) -> None:
    for name in ("COMPOSE_FILE", "DOCKER_HOST", "PATH"):
        compose = (
            f'x-compose-agent:\n  secrets:\n    {name}: "secret/apps/x#db"\nservices:\n  app:\n    image: {{image}}\n'
        )
        project = stacks.make(compose)
        with pytest.raises(InvalidInput, match="give the secret another name"):
            await vault_ops.up(project)
        await _nothing_started(vault_ops, project)


async def test_compose_refuses_an_extra_variable_that_its_environment_already_holds(tmp_path: Path) -> None:
    cli = ComposeCli.locate(None, {"PATH": os.environ["PATH"], "HOME": "/root", "SHOP_REGION": "eu"}, ["SHOP_REGION"])
    for taken in ("PATH", "SHOP_REGION", "VAULT_TOKEN", "COMPOSE_FILE"):
        with pytest.raises(InvalidInput, match=f"secret\\(s\\) {taken} would replace"):
            await cli.run("p", ["version"], extra_env={taken: "x" * 12})
    output = await cli.run("p", ["version"], extra_env={"DB_PASSWORD": "x" * 12})
    assert output is not None
    assert issubclass(SecretUnavailable, GatewayError)


async def test_a_stack_stops_and_comes_down_without_vault_but_does_not_start_without_it(
    vault_ops: ComposeOperations, stacks: StackFactory, openbao: OpenBao, tmp_path: Path
) -> None:
    secret = _stack(stacks, openbao)
    openbao.request("POST", f"secret/data/{secret.path}", {"data": {"db": secret.value}})
    with anyio.fail_after(60):
        await vault_ops.up(secret.name, wait=True)
    # The same stacks and state dir, and a Vault that does not answer.
    environ = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/root"),
        "COMPOSE_AGENT_STATE_DIR": str(tmp_path / "state"),
        "VAULT_ADDRESS": f"http://127.0.0.1:{free_port()}",
        "VAULT_TOKEN": "s.whatever",
    }
    settings = load_settings(environ, stacks_dir=stacks.root)
    offline = ComposeOperations.from_settings(settings, plane=ControlPlane.COMPOSE_AGENT, environ=environ)
    try:
        assert (await offline.service_action("stop", secret.name)).ok
        with pytest.raises(SecretUnavailable, match=rf"secret DB_PASSWORD .*secret/{secret.path}#db"):
            await offline.service_action("start", secret.name)
        assert (await offline.down(secret.name)).ok
        assert await anyio.to_thread.run_sync(offline.engine.project_containers, secret.name) == []
    finally:
        offline.close()

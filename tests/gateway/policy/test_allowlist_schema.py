"""The allowlist against Compose's own schema: every key Compose accepts is classified.

The schema is read out of the installed Compose binary (see ``compose_schema.py``). A Compose
upgrade that adds a key makes the first test fail, naming the key: decide whether it is allowed
(with which constraint), refused with a rule, or deliberately unknown, and add it to
``gateway/policy/allowlist.py``. Until then the judge refuses it with ``unknown_key``.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from gateway.policy.allowlist import TABLE, covered
from tests.gateway.policy.compose_schema import compose_binary, embedded_schema, schema_paths

pytestmark = pytest.mark.docker

# Keys Compose's normalised model writes that its input schema does not name: none so far.
NORMALISED_ONLY: frozenset[str] = frozenset()


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    binary, version = compose_binary()
    found = embedded_schema(binary)
    assert found.get("$id") == "compose_spec.json", f"not the compose-spec schema in Compose {version}"
    return found


def unclassified(schema: dict[str, Any]) -> list[str]:
    paths, _ = schema_paths(schema)
    return sorted(path for path in paths if covered(path) is None)


def test_every_key_compose_accepts_is_classified_by_the_allowlist(schema: dict[str, Any]) -> None:
    missing = unclassified(schema)
    assert not missing, (
        f"Compose accepts {len(missing)} key path(s) the allowlist does not classify: {', '.join(missing)}. "
        "Review each and add it to gateway/policy/allowlist.py: allowed (with its constraint), refused with "
        "a rule, or deliberately unknown; and say why in docs/security.md."
    )


def test_every_key_of_the_allowlist_is_one_compose_knows(schema: dict[str, Any]) -> None:
    paths, free = schema_paths(schema)
    stray = [
        path
        for path in TABLE
        if path
        and path not in paths
        and path not in NORMALISED_ONLY
        and not any(path == f"{parent}.*" for parent in free)
    ]
    assert not stray, f"the allowlist names keys Compose does not know (a typo, or a key Compose dropped): {stray}"


def test_a_key_a_compose_upgrade_adds_is_reported_until_it_is_classified(schema: dict[str, Any]) -> None:
    upgraded = copy.deepcopy(schema)
    definitions = upgraded.get("definitions") or upgraded["$defs"]
    definitions["service"]["properties"]["teleport_host"] = {"type": "boolean"}
    definitions["network"]["properties"]["ipam"]["properties"]["wormhole"] = {"type": "string"}
    assert unclassified(upgraded) == ["networks.*.ipam.wormhole", "services.*.teleport_host"]


def test_the_schema_names_the_keys_issue_20_found_past_the_old_guard(schema: dict[str, Any]) -> None:
    paths, _ = schema_paths(schema)
    recent = {
        "services.*.use_api_socket": "docker_socket",
        "services.*.provider": "provider",
        "services.*.models": "provider",
        "services.*.post_start.privileged": "privileged",
        "services.*.gpus": "devices",
        "services.*.build.entitlements": None,
        "services.*.build.tags": None,
        "services.*.label_file": None,
        "services.*.develop": None,
    }
    for path, rule in recent.items():
        assert path in paths, f"Compose no longer has {path}"
        key = covered(path)
        assert key is not None
        if rule is not None:
            assert key.opaque and key.check is not None, f"{path} must be refused with {rule}"

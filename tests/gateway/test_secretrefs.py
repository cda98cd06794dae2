"""References to Vault in a compose file: what is accepted, and every way around it refused with a clear message."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.errors import InvalidInput
from gateway.secretrefs import (
    DIGEST_LABEL,
    Reference,
    bind,
    changed_secrets,
    check_names,
    parse_block,
    placeholders,
    with_digests,
)
from gateway.swarm.stackfile import stack_target


def test_a_reference_names_a_mount_a_path_and_a_key() -> None:
    refs = parse_block({"secrets": {"DB_PASSWORD": "secret/apps/shop#db", "API_KEY": "kv2/a.b/c_d-e/f#key.1"}})
    assert refs == {
        "DB_PASSWORD": Reference("secret", "apps/shop", "db"),
        "API_KEY": Reference("kv2", "a.b/c_d-e/f", "key.1"),
    }
    assert str(refs["DB_PASSWORD"]) == "secret/apps/shop#db"


@pytest.mark.parametrize(
    "reference",
    [
        "secret/../sys/policy#x",
        "secret/apps/../../x#db",
        "secret/./apps#db",
        "secret//apps#db",
        "../secret/apps#db",
        "secret/apps#",
        "secret/apps",
        "secret#db",
        "/secret/apps#db",
        "secret/apps/#db",
        "secret/apps%2f..#db",
        "secret/apps#db#x",
        "secret/apps?x=1#db",
        "secret/ap ps#db",
        "secret/apps#d b",
        "secret/.hidden#db",
        "secret/apps#../db",
        "secret/apps\n#db",
        "",
    ],
)
def test_a_reference_that_could_escape_or_be_read_two_ways_is_refused(reference: str) -> None:
    with pytest.raises(InvalidInput, match="is not a reference") as caught:
        parse_block({"secrets": {"DB_PASSWORD": reference}})
    assert "mount/path#key" in str(caught.value)


@pytest.mark.parametrize("value", [None, 42, ["secret/a#b"], {"path": "secret/a#b"}, True])
def test_a_reference_that_is_not_a_string_is_refused(value: Any) -> None:
    with pytest.raises(InvalidInput, match="is not a reference"):
        parse_block({"secrets": {"DB_PASSWORD": value}})


@pytest.mark.parametrize(
    "name",
    [
        "PATH",
        "HOME",
        "COMPOSE_FILE",
        "COMPOSE_PROJECT_NAME",
        "DOCKER_HOST",
        "DOCKER_CONFIG",
        "LD_PRELOAD",
        "SSH_AUTH_SOCK",
        "HTTPS_PROXY",
        "GODEBUG",
        "VAULT_TOKEN",
        "STATUS_PANEL_TOKEN",
        "BUILDKIT_PROGRESS",
    ],
)
def test_a_name_that_steers_the_tools_the_gateway_runs_is_refused(name: str) -> None:
    with pytest.raises(InvalidInput, match="give the secret another name"):
        check_names([name])


@pytest.mark.parametrize("name", ["db_password", "1PASSWORD", "_X", "DB-PASSWORD", "DB PASSWORD", "É", "A" * 65, ""])
def test_a_name_that_is_not_an_upper_case_variable_name_is_refused(name: str) -> None:
    with pytest.raises(InvalidInput, match="is not a variable name"):
        check_names([name])


def test_the_block_must_be_a_mapping_and_not_too_long() -> None:
    with pytest.raises(InvalidInput, match="must be a mapping"):
        parse_block({"secrets": ["DB_PASSWORD"]})
    with pytest.raises(InvalidInput, match="at most 64"):
        check_names([f"S{i}" for i in range(65)])
    assert parse_block({"target": "compose"}) == {}
    assert parse_block(None) == {}


def test_the_opt_in_block_accepts_secrets_on_compose_and_refuses_them_on_swarm() -> None:
    model = {"x-compose-agent": {"secrets": {"DB_PASSWORD": "secret/a#b"}}}
    assert stack_target(model).target == "compose"
    with pytest.raises(InvalidInput, match="run on Compose only"):
        stack_target({"x-compose-agent": {"target": "swarm", "secrets": {"DB_PASSWORD": "secret/a#b"}}})


def _model(**service: Any) -> dict[str, Any]:
    return {"services": {"app": {"image": "busybox", **service}}}


def test_bind_turns_placeholders_in_environment_values_back_into_references() -> None:
    stand_ins = placeholders(("DB_PASSWORD",))
    p = stand_ins["DB_PASSWORD"]
    model = _model(environment={"DB_PASSWORD": p, "DSN": f"pg://u:{p}@db/x$$y", "PLAIN": "v"})
    bound = bind(model, stand_ins)
    assert bound["services"]["app"]["environment"] == {
        "DB_PASSWORD": "${DB_PASSWORD}",
        "DSN": "pg://u:${DB_PASSWORD}@db/x$$y",
        "PLAIN": "v",
    }
    assert bind(model, {}) is model


@pytest.mark.parametrize(
    ("where", "service"),
    [
        ("services.app.command", {"command": ["sh", "-c", "echo {p}"]}),
        ("services.app.labels.x", {"labels": {"x": "{p}"}}),
        ("services.app.volumes", {"volumes": ["{p}:/data"]}),
        ("services.app.image", {"image": "busybox:{p}"}),
        ("services.app.environment.<key>", {"environment": {"{p}": "x"}}),
        ("services.app.healthcheck.test", {"healthcheck": {"test": ["CMD", "{p}"]}}),
    ],
)
def test_a_secret_anywhere_but_a_service_environment_is_refused(where: str, service: dict[str, Any]) -> None:
    stand_ins = placeholders(("DB_PASSWORD",))

    def fill(value: Any) -> Any:
        if isinstance(value, str):
            return value.replace("{p}", stand_ins["DB_PASSWORD"])
        if isinstance(value, list):
            return [fill(v) for v in value]
        if isinstance(value, dict):
            return {fill(k): fill(v) for k, v in value.items()}
        return value

    with pytest.raises(InvalidInput, match="may be used only as a service's environment value") as caught:
        bind(_model(**fill(service)), stand_ins)
    assert where in str(caught.value)
    assert stand_ins["DB_PASSWORD"] not in str(caught.value) or "<key>" in where


def test_digests_label_only_the_services_that_use_a_secret_and_change_with_the_value() -> None:
    model: dict[str, Any] = {
        "services": {
            "app": {"environment": {"A": "${DB_PASSWORD}"}},
            "files": {"secrets": [{"source": "db", "target": "/run/secrets/db"}]},
            "other": {"environment": {"A": "plain"}},
        },
        "secrets": {"db": {"environment": "API_KEY"}},
    }
    key = b"k" * 32
    first = with_digests(model, {"DB_PASSWORD": "value-one-1", "API_KEY": "value-two-2"}, key)
    labels = {name: str((spec.get("labels") or {}).get(DIGEST_LABEL, "")) for name, spec in first["services"].items()}
    assert labels["other"] == ""
    assert labels["app"].startswith("DB_PASSWORD:") and labels["files"].startswith("API_KEY:")
    assert "value-one-1" not in str(first) and "value-two-2" not in str(first)
    second = with_digests(model, {"DB_PASSWORD": "value-one-X", "API_KEY": "value-two-2"}, key)
    assert second["services"]["files"]["labels"] == first["services"]["files"]["labels"]
    new_app = second["services"]["app"]["labels"][DIGEST_LABEL]
    assert changed_secrets(labels["app"], new_app) == ["DB_PASSWORD"]
    assert changed_secrets(None, new_app) == ["DB_PASSWORD"]
    assert model["services"]["app"].get("labels") is None  # the judged model itself is not changed

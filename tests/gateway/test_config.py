"""Settings: config.json < environment < CLI flags, validated once, with errors that say where to look."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from gateway.config import Settings, default_state_dir, load_settings
from gateway.errors import ConfigError
from gateway.metrics import ControlPlane


def _write(tmp_path: Path, content: str) -> dict[str, str]:
    path = tmp_path / "config.json"
    path.write_text(content)
    return {"CONFIG_PATH": str(path)}


def test_defaults_hold_without_file_or_environment(tmp_path: Path) -> None:
    settings = load_settings({"CONFIG_PATH": str(tmp_path / "absent.json")})

    assert settings.compose_agent_enabled is True
    assert settings.control_plane is ControlPlane.COMPOSE_AGENT
    assert settings.vault_address is None
    assert settings.vault_agent_path_prefix == "agent"
    assert settings.vault_refresh_secs == 60
    assert settings.vault_startup_timeout == 30


def test_the_file_sets_both_seed_fields(tmp_path: Path) -> None:
    env = _write(tmp_path, json.dumps({"compose_agent_enabled": False, "control_plane": "status_panel"}))

    settings = load_settings(env)

    assert settings.compose_agent_enabled is False
    assert settings.control_plane is ControlPlane.STATUS_PANEL


def test_the_environment_wins_over_the_file(tmp_path: Path) -> None:
    env = _write(tmp_path, json.dumps({"compose_agent_enabled": False, "control_plane": "status_panel"}))

    settings = load_settings({**env, "COMPOSE_AGENT_ENABLED": "true", "CONTROL_PLANE": "compose_agent"})

    assert settings.compose_agent_enabled is True
    assert settings.control_plane is ControlPlane.COMPOSE_AGENT


def test_cli_overrides_win_over_the_environment_and_none_means_unset(tmp_path: Path) -> None:
    env = {"CONFIG_PATH": str(tmp_path / "absent.json"), "STACKS_DIR": "/from/env", "VAULT_REFRESH_SECS": "5"}

    settings = load_settings(env, stacks_dir=Path("/from/cli"), vault_refresh_secs=None)

    assert settings.stacks_dir == Path("/from/cli")
    assert settings.vault_refresh_secs == 5


def test_an_empty_environment_variable_does_not_mask_the_file(tmp_path: Path) -> None:
    env = _write(tmp_path, json.dumps({"control_plane": "status_panel"}))

    assert load_settings({**env, "CONTROL_PLANE": ""}).control_plane is ControlPlane.STATUS_PANEL


def test_the_vault_variables_land_in_settings(tmp_path: Path) -> None:
    settings = load_settings(
        {
            "CONFIG_PATH": str(tmp_path / "absent.json"),
            "VAULT_ADDRESS": "http://127.0.0.1:8200/",
            "VAULT_TOKEN": "vault-secret",
            "VAULT_AGENT_PATH_PREFIX": "team/agents",
            "VAULT_TOKEN_KEY": "status_panel_token",
            "VAULT_REFRESH_SECS": "0.5",
            "VAULT_STARTUP_TIMEOUT": "3",
            "DEPLOYMENT_HASH": "abc123",
        }
    )

    assert settings.vault_address == "http://127.0.0.1:8200"
    assert settings.vault_token == "vault-secret"
    assert settings.vault_agent_path_prefix == "team/agents"
    assert settings.vault_token_key == "status_panel_token"
    assert (settings.vault_refresh_secs, settings.vault_startup_timeout) == (0.5, 3)
    assert settings.deployment_hash == "abc123"
    assert "vault-secret" not in repr(settings)


def test_settings_are_frozen(tmp_path: Path) -> None:
    settings = load_settings({"CONFIG_PATH": str(tmp_path / "absent.json")})

    with pytest.raises(ValueError, match="frozen"):
        settings.vault_address = "http://elsewhere"


def test_malformed_json_names_the_file_line_and_column(tmp_path: Path) -> None:
    env = _write(tmp_path, '{\n  "control_plane": "compose_agent",\n  "compose_agent_enabled": tru\n}\n')

    with pytest.raises(ConfigError) as caught:
        load_settings(env)

    message = str(caught.value)
    assert env["CONFIG_PATH"] in message
    assert "line 3, column 28" in message


def test_a_file_that_is_not_an_object_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="must hold a JSON object, not list"):
        load_settings(_write(tmp_path, "[]"))


def test_an_unknown_field_in_the_file_is_named_with_the_known_ones(tmp_path: Path) -> None:
    env = _write(tmp_path, json.dumps({"control_plane": "compose_agent", "vault_token": "x"}))

    with pytest.raises(ConfigError, match="unknown field.*vault_token.*known: compose_agent_enabled, control_plane"):
        load_settings(env)


def test_an_unknown_control_plane_names_the_allowed_values_and_the_file(tmp_path: Path) -> None:
    env = _write(tmp_path, json.dumps({"control_plane": "kubernetes"}))

    with pytest.raises(ConfigError) as caught:
        load_settings(env)

    message = str(caught.value)
    assert "status_panel, compose_agent" in message
    assert env["CONFIG_PATH"] in message


def test_an_unknown_control_plane_in_the_environment_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="environment variable CONTROL_PLANE.*allowed values"):
        load_settings({"CONFIG_PATH": str(tmp_path / "absent.json"), "CONTROL_PLANE": "both"})


def test_a_bad_boolean_in_the_environment_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="COMPOSE_AGENT_ENABLED='maybe' is not a boolean"):
        load_settings({"CONFIG_PATH": str(tmp_path / "absent.json"), "COMPOSE_AGENT_ENABLED": "maybe"})


@pytest.mark.parametrize(
    ("var", "value", "expected"),
    [
        ("VAULT_REFRESH_SECS", "soon", "valid number"),
        ("VAULT_REFRESH_SECS", "0", "greater than 0"),
        ("VAULT_STARTUP_TIMEOUT", "-1", "greater than 0"),
        ("VAULT_ADDRESS", "vault:8200", "http:// or https://"),
        ("DEPLOYMENT_HASH", "../../sys", "is not allowed"),
        ("DEPLOYMENT_HASH", "..", "is not allowed"),
        ("VAULT_TOKEN_KEY", "a/b", "is not allowed"),
        ("VAULT_AGENT_PATH_PREFIX", "agent/../other", "is not allowed"),
    ],
)
def test_a_bad_environment_value_names_its_variable(tmp_path: Path, var: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"CONFIG_PATH": str(tmp_path / "absent.json"), var: value})

    assert f"environment variable {var}" in str(caught.value)
    assert expected in str(caught.value)


def test_a_validation_error_never_repeats_a_token_value(tmp_path: Path) -> None:
    # A token passed where a number belongs: the message must name the flag, not echo the value.
    with pytest.raises(ConfigError) as caught:
        load_settings({"CONFIG_PATH": str(tmp_path / "absent.json")}, vault_refresh_secs="s3cr3t-token-value")

    assert "command line" in str(caught.value)
    assert "s3cr3t-token-value" not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_the_state_dir_follows_compose_agent_state_dir_then_xdg() -> None:
    assert default_state_dir({"COMPOSE_AGENT_STATE_DIR": "/srv/state"}) == Path("/srv/state")
    assert default_state_dir({"XDG_STATE_HOME": "/x"}) == Path("/x/compose-agent")
    assert default_state_dir({"HOME": "/home/op"}) == Path("/home/op/.local/state/compose-agent")


def test_settings_can_be_built_directly_for_tests() -> None:
    assert Settings(vault_address="https://vault.example:8200").vault_address == "https://vault.example:8200"


def test_a_named_config_file_that_is_missing_is_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    missing = tmp_path / "cnofig.json"
    with caplog.at_level(logging.INFO, logger="gateway"):
        load_settings({"CONFIG_PATH": str(missing)})
    assert any(str(missing) in r.getMessage() and "does not exist" in r.getMessage() for r in caplog.records)


def test_only_the_deploy_family_can_be_granted_to_the_panel_token(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"status_panel_tools": ["rollback"]}))
    assert load_settings({"CONFIG_PATH": str(config)}).status_panel_tools == ("rollback",)
    config.write_text(json.dumps({"status_panel_tools": ["rollback", "config"]}))
    with pytest.raises(ConfigError, match="may only name deploy, rollback, not config"):
        load_settings({"CONFIG_PATH": str(config)})

"""The Compose CLI wrapper's pure parts: what reaches the child's environment, how events read."""

from __future__ import annotations

from gateway.compose.cli import FIXED_ENV, ComposeCli, compose_environment, describe_event


def test_the_cli_sees_only_allowlisted_variables_never_secrets_or_steering_ones() -> None:
    env = {
        "PATH": "/usr/bin",
        "HOME": "/home/agent",
        "DOCKER_HOST": "unix:///run/docker.sock",
        "DOCKER_API_VERSION": "1.41",
        "AWS_SECRET_ACCESS_KEY": "aws",
        "GITHUB_TOKEN": "gh",
        "TZ": "UTC",
        "COMPOSE_AGENT_TOKEN": "a",
        "STATUS_PANEL_TOKEN": "b",
        "VAULT_TOKEN": "c",
        "COMPOSE_FILE": "/elsewhere/compose.yaml",
        "COMPOSE_PROFILES": "debug",
        "COMPOSE_PROJECT_NAME": "other",
        "COMPOSE_EXPERIMENTAL_GIT_REMOTE": "1",
    }
    cli = ComposeCli(["docker-compose"], "2.40.3", env)
    assert cli.env == {
        "PATH": "/usr/bin",
        "HOME": "/home/agent",
        "DOCKER_HOST": "unix:///run/docker.sock",
        # Compose's remote loaders are off on every run, whatever the environment or pass_env say.
        "COMPOSE_EXPERIMENTAL_GIT_REMOTE": "0",
        "COMPOSE_EXPERIMENTAL_OCI_REMOTE": "0",
    }
    # The operator's pass_env adds names, but never a secret or a steering variable.
    passed = ComposeCli(
        ["docker-compose"],
        "2.40.3",
        env,
        pass_env=["TZ", "VAULT_TOKEN", "COMPOSE_FILE", "COMPOSE_EXPERIMENTAL_GIT_REMOTE"],
    )
    assert set(passed.env) == {"PATH", "HOME", "DOCKER_HOST", "TZ", *FIXED_ENV}
    assert passed.env["COMPOSE_EXPERIMENTAL_GIT_REMOTE"] == "0"
    assert compose_environment(env, ["DOCKER_API_VERSION"])["DOCKER_API_VERSION"] == "1.41"


def test_events_read_as_short_lines() -> None:
    assert describe_event({"id": "Container s-web-1", "status": "Started"}) == "Container s-web-1: Started"
    assert describe_event({"error": True, "message": "no such image"}) == "error: no such image"
    assert describe_event({"level": "warning", "msg": "orphans"}) == "warning: orphans"
    assert describe_event({"unrelated": 1}) is None


def test_every_command_names_its_project_and_asks_for_json_progress() -> None:
    argv = ComposeCli(["docker-compose"], "2.40.3", {}).command("shop", None, ["restart", "web"])
    assert argv == ["docker-compose", "--progress", "json", "--project-name", "shop", "restart", "web"]

"""Health classification from ``docker inspect`` data and recent logs."""

from __future__ import annotations

from typing import Any

from watchdog import State, classify
from watchdog.health import advice


def inspect(**state: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"Status": "running", "Running": True, "ExitCode": 0, "OOMKilled": False}
    base.update(state)
    return {"State": base, "RestartCount": 0, "HostConfig": {"RestartPolicy": {"Name": "no"}}}


GLIBC_LOG = (
    "/usr/local/bin/python3: /lib/x86_64-linux-gnu/libc.so.6: version `GLIBC_2.38' not found "
    "(required by /usr/local/bin/python3)\n"
)


def test_running_without_a_healthcheck_is_healthy() -> None:
    assert classify(inspect()).state is State.HEALTHY


def test_running_and_healthy_is_healthy_and_starting_is_given_the_benefit_of_the_doubt() -> None:
    assert classify(inspect(Health={"Status": "healthy", "Log": []})).state is State.HEALTHY
    starting = classify(inspect(Health={"Status": "starting", "Log": []}))
    assert starting.state is State.HEALTHY and starting.reason == "healthcheck starting"


def test_a_failing_healthcheck_is_unhealthy_with_the_last_probe_output() -> None:
    log = [{"ExitCode": 1, "Output": "wget: can't connect\n"}, {"ExitCode": 1, "Output": "probe says no\n"}]
    health = classify(inspect(Health={"Status": "unhealthy", "Log": log}))
    assert health.state is State.UNHEALTHY
    assert health.reason == "healthcheck failing (last probe exit code 1: probe says no)"


def test_an_exited_target_is_unhealthy_with_its_exit_code() -> None:
    health = classify(inspect(Status="exited", Running=False, ExitCode=3))
    assert (health.state, health.reason) == (State.UNHEALTHY, "exited with code 3")


def test_a_stopped_target_is_a_failure_to_repair() -> None:
    assert classify(inspect(Status="exited", Running=False, ExitCode=0)).failing


def test_an_oom_killed_target_says_so() -> None:
    health = classify(inspect(Status="exited", Running=False, ExitCode=137, OOMKilled=True))
    assert health.reason == "OOM-killed (exit code 137)"
    assert "memory" in advice(health.state, health.reason)


def test_a_target_dockerd_is_restarting_is_flagged_with_its_restart_count() -> None:
    attrs = inspect(Status="restarting", Running=True, Restarting=True)
    attrs["RestartCount"] = 4
    attrs["HostConfig"]["RestartPolicy"]["Name"] = "always"
    health = classify(attrs)
    assert health.state is State.UNHEALTHY and health.engine_restarting and health.restart_count == 4
    assert "restart policy always, RestartCount=4" in health.reason


def test_the_glibc_loader_error_in_the_logs_is_a_glibc_mismatch() -> None:
    health = classify(inspect(Status="exited", Running=False, ExitCode=1), logs="starting\n" + GLIBC_LOG)
    assert health.state is State.GLIBC_MISMATCH
    assert "GLIBC_2.38" in health.reason and "exited with code 1" in health.reason
    assert "static/musl" in advice(health.state, health.reason)


def test_glibc_in_the_logs_of_a_healthy_target_is_not_a_failure() -> None:
    assert classify(inspect(), logs=GLIBC_LOG).state is State.HEALTHY


def test_no_container_is_not_found() -> None:
    assert classify(None).state is State.NOT_FOUND

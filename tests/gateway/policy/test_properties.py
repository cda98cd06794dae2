"""Properties of the guard, on random models and random stacks (hypothesis).

- A model with a key the allowlist does not know, anywhere, is refused with ``unknown_key`` and its path.
- An ordinary stack built from allowed keys is allowed, judged on Compose's own model of it.
- Whatever the model holds, judging it never raises: the worst is the stack's own error verdict.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.compose.cli import ComposeCli
from gateway.policy.allowlist import TABLE
from gateway.policy.findings import Context
from gateway.policy.guard import PolicyGuard
from gateway.policy.judge import judge_model
from gateway.policy.reader import Reading
from gateway.policy.rules import Policy
from gateway.stacks import find_stack

STACK = "prop"
FOLDER = Path(tempfile.gettempdir()) / "compose-agent-properties" / STACK

names = st.from_regex(r"[a-z][a-z0-9]{0,7}", fullmatch=True)
words = st.from_regex(r"[A-Za-z0-9_./:-]{1,12}", fullmatch=True)
env_names = st.from_regex(r"[A-Z][A-Z0-9_]{0,10}", fullmatch=True)
label_keys = st.from_regex(r"(org|io)\.example\.[a-z]{1,8}", fullmatch=True)


def context() -> Context:
    return Context(STACK, FOLDER, Policy())


def reading() -> Reading:
    return Reading(FOLDER, (FOLDER / "compose.yaml",), (), (), (), (), 0)


@st.composite
def normalised_service(draw: st.DrawFn) -> dict[str, Any]:
    """A service in the shape ``docker compose config --format json`` prints, from allowed keys only."""
    spec: dict[str, Any] = {"image": draw(st.sampled_from(["busybox", "nginx:1.27", "registry.example.com/a/b:1"]))}
    if draw(st.booleans()):
        spec["command"] = draw(st.lists(words, max_size=4))
    if draw(st.booleans()):
        spec["environment"] = draw(st.dictionaries(env_names, words, max_size=4))
    if draw(st.booleans()):
        spec["labels"] = draw(st.dictionaries(label_keys, words, max_size=3))
    if draw(st.booleans()):
        spec["ports"] = [{"mode": "ingress", "host_ip": "127.0.0.1", "target": draw(st.integers(1, 65535)),
                          "published": str(draw(st.integers(1024, 65535))), "protocol": "tcp"}]  # fmt: skip
    if draw(st.booleans()):
        spec["volumes"] = [
            {"type": "bind", "source": str(FOLDER / draw(names)), "target": "/d", "bind": {"create_host_path": True}},
            {"type": "volume", "source": "data", "target": "/var/lib/x", "volume": {}},
            {"type": "tmpfs", "target": "/tmp", "tmpfs": {"size": 1048576}},
        ]  # fmt: skip
    if draw(st.booleans()):
        spec["healthcheck"] = {"test": ["CMD", "true"], "interval": "5s", "retries": draw(st.integers(1, 9))}
    if draw(st.booleans()):
        spec["logging"] = {"driver": "json-file", "options": {"max-size": "10m", "max-file": "3"}}
    if draw(st.booleans()):
        spec["deploy"] = {"resources": {"limits": {"cpus": 0.5, "memory": "52428800"}}, "placement": {}}
    for key, value in draw(st.dictionaries(st.sampled_from(
        ["init", "read_only", "tty", "stdin_open", "restart", "user", "working_dir", "hostname", "stop_signal"]
    ), st.sampled_from([True, False, "always", "1000", "/srv", "SIGTERM"]), max_size=4)).items():  # fmt: skip
        spec[key] = value
    spec["networks"] = {"default": None}
    return spec


@st.composite
def normalised_model(draw: st.DrawFn) -> dict[str, Any]:
    services = draw(st.dictionaries(names, normalised_service(), min_size=1, max_size=3))
    return {
        "name": STACK,
        "services": services,
        "networks": {"default": {"name": f"{STACK}_default", "ipam": {}}},
        "volumes": {"data": {"name": f"{STACK}_data"}},
    }


def struct_positions(value: Any, pattern: str = "", path: tuple[str, ...] = ()) -> list[tuple[str, tuple[str, ...]]]:
    """Every mapping of fixed keys in a model: where a key of a name the allowlist does not know can go."""
    found: list[tuple[str, tuple[str, ...]]] = []
    key = TABLE.get(pattern)
    if key is None or key.opaque:
        return found
    if isinstance(value, dict):
        if key.mapping == "struct":
            found.append((pattern, path))
        for name, child in value.items():
            child_pattern = f"{pattern}.*" if key.mapping == "map" else f"{pattern}.{name}".lstrip(".")
            found += struct_positions(child, child_pattern, (*path, name))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += struct_positions(item, pattern, (*path, f"[{index}]"))
    return found


@given(model=normalised_model())
@settings(max_examples=150, deadline=None)
def test_ordinary_models_from_allowed_keys_are_allowed(model: dict[str, Any]) -> None:
    result = judge_model(reading(), model, context())
    assert result.allowed, result.verdict


@given(model=normalised_model(), data=st.data())
@settings(max_examples=200, deadline=None)
def test_a_key_outside_the_allowlist_is_refused_with_its_path_wherever_it_is(
    model: dict[str, Any], data: st.DataObject
) -> None:
    pattern, path = data.draw(st.sampled_from(struct_positions(model)))
    key = data.draw(
        st.from_regex(r"[a-z][a-z_]{0,15}", fullmatch=True).filter(
            lambda name: f"{pattern}.{name}".lstrip(".") not in TABLE
        )
    )
    target: Any = model
    for part in path:
        target = target[int(part[1:-1])] if part.startswith("[") else target[part]
    target[key] = data.draw(st.one_of(st.booleans(), words, st.lists(words, max_size=2), st.just({"a": "b"})))
    result = judge_model(reading(), model, context())
    assert not result.allowed and "unknown_key" in result.verdict.rules
    shown = ".".join(path).replace(".[", "[")
    expected = f"{shown}.{key}" if shown else key
    assert any(v.value.startswith(f"{expected} ") for v in result.violations), (expected, result.verdict)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(sorted({p.rsplit(".", 1)[-1] for p in TABLE if p}) + ["x-a", "zz"]), children, max_size=4
        )
    ),  # fmt: skip
    max_leaves=25,
)


@given(model=st.dictionaries(st.sampled_from(["services", "volumes", "networks", "secrets", "configs", "x-a", "zz"]),
                             json_values, max_size=5))  # fmt: skip
@settings(max_examples=400, deadline=None)
def test_judging_any_model_never_raises(model: dict[str, Any]) -> None:
    result = judge_model(reading(), model, context())
    assert result.verdict.allowed or result.verdict.rules or result.verdict.error


# Ordinary compose files, as a person writes them; a sample of them goes through the real Compose.
@st.composite
def ordinary_compose(draw: st.DrawFn) -> dict[str, Any]:
    services: dict[str, Any] = {}
    names_drawn = draw(st.lists(names, min_size=1, max_size=3, unique=True))
    for name in names_drawn:
        spec: dict[str, Any] = {"image": "{image}"}
        options = draw(st.sets(st.sampled_from(
            ["command", "environment", "labels", "ports", "bind", "named", "tmpfs", "healthcheck", "depends_on",
             "logging", "limits", "hardening", "profiles", "extra_hosts", "restart", "build"]
        )))  # fmt: skip
        if "command" in options:
            spec["command"] = ["sleep", str(draw(st.integers(1, 3600)))]
        if "environment" in options:
            spec["environment"] = draw(st.dictionaries(env_names, st.from_regex(r"[a-z0-9]{0,8}", fullmatch=True),
                                                       max_size=3))  # fmt: skip
        if "labels" in options:
            spec["labels"] = draw(st.dictionaries(label_keys, st.from_regex(r"[a-z0-9]{0,8}", fullmatch=True),
                                                  max_size=3))  # fmt: skip
        if "ports" in options:
            spec["ports"] = [draw(st.sampled_from(["127.0.0.1::80", "8080:80", "9000-9001:9000-9001/udp"]))]
        spec["volumes"] = [v for k, v in (("bind", "./data:/data:ro"), ("named", "store:/store"), ("tmpfs", None))
                           if k in options and v]  # fmt: skip
        if "tmpfs" in options:
            spec["tmpfs"] = ["/run"]
        if "healthcheck" in options:
            spec["healthcheck"] = {"test": ["CMD", "true"], "interval": "2s", "retries": 3}
        if "depends_on" in options and name != names_drawn[0]:
            spec["depends_on"] = [names_drawn[0]]
        if "logging" in options:
            spec["logging"] = {"driver": draw(st.sampled_from(["json-file", "local"])), "options": {"max-size": "1m"}}
        if "limits" in options:
            spec["deploy"] = {"resources": {"limits": {"cpus": "0.5", "memory": "64M"}}}
            spec["ulimits"] = {"nofile": {"soft": 1024, "hard": 2048}}
        if "hardening" in options:
            spec |= {"read_only": True, "cap_drop": ["ALL"], "security_opt": ["no-new-privileges:true"], "init": True}
        if "profiles" in options:
            spec["profiles"] = ["debug"]
        if "extra_hosts" in options:
            spec["extra_hosts"] = ["db.local:10.0.0.5"]
        if "restart" in options:
            spec["restart"] = draw(st.sampled_from(["no", "always", "unless-stopped", "on-failure"]))
        if "build" in options:
            spec["build"] = {"context": ".", "args": {"V": "1"}}
            spec["image"] = f"{{stack}}-{name}"
        if not spec["volumes"]:
            del spec["volumes"]
        services[name] = spec
    return {"services": services, "volumes": {"store": {}}, "networks": {"default": {}}}


@given(compose=ordinary_compose())
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@pytest.mark.docker
def test_ordinary_stacks_load_in_compose_and_are_allowed(compose: dict[str, Any], busybox_image: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        name = f"prop{os.getpid()}"
        folder = Path(tmp) / name
        folder.mkdir()
        text = json.dumps(compose).replace("{image}", busybox_image).replace("{stack}", name)
        (folder / "compose.yaml").write_text(text)
        (folder / "Dockerfile").write_text("FROM scratch\n")
        stack = find_stack(Path(tmp), name)
        assert stack is not None
        cli = ComposeCli.locate(None, os.environ)
        evaluation = anyio.run(PolicyGuard(Policy()).evaluate, stack, cli)
        assert evaluation.verdict.allowed, (text, evaluation.verdict)
        assert set(evaluation.model["services"]) == set(compose["services"])

"""The judge on Compose-shaped models, without Compose: every key against the allowlist, each rule on
its key, names and owners, and failures that stay with their stack.

The models here have the shape ``docker compose config --format json`` prints; the hostile corpus
(``test_hostile_corpus.py``) and the property tests drive the same judge through the real Compose.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

import gateway.policy.allowlist
from gateway.policy.findings import Context, OwnerLookup, namespace_owner
from gateway.policy.judge import Judgement, judge_model
from gateway.policy.reader import Reading
from gateway.policy.rules import RULES, Policy, StackRules

STACK = "shop"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "stacks" / STACK
    path.mkdir(parents=True)
    return path


def reading(folder: Path, dotenv: tuple[str, ...] = ()) -> Reading:
    return Reading(folder, (folder / "compose.yaml",), (), (), (), dotenv, 0)


def judge(
    folder: Path,
    model: dict[str, Any],
    policy: Policy | None = None,
    *,
    neighbours: frozenset[str] = frozenset(),
    self_project: str | None = None,
    owners: OwnerLookup | None = None,
    dotenv: tuple[str, ...] = (),
) -> Judgement:
    context = Context(
        STACK, folder, policy or Policy(), neighbours=neighbours, self_project=self_project, owners=owners
    )
    return judge_model(reading(folder, dotenv), {"name": STACK, **model}, context)


def service(**spec: Any) -> dict[str, Any]:
    return {"services": {"web": {"image": "busybox", **spec}}}


def net(**spec: Any) -> dict[str, Any]:
    return {"networks": {"n": {"name": f"{STACK}_n", **spec}}}


def vol(**spec: Any) -> dict[str, Any]:
    return {"volumes": {"v": {"name": f"{STACK}_v", **spec}}}


def mount(source: str, **extra: Any) -> dict[str, Any]:
    return service(volumes=[{"type": "bind", "source": source, "target": "/x", **extra}])


def values(result: Judgement, rule: str) -> list[str]:
    return [v.value for v in result.violations if v.rule == rule]


def test_an_ordinary_model_is_allowed(folder: Path) -> None:
    model = {
        "services": {
            "web": {
                "image": "busybox",
                "command": ["httpd", "-f"],
                "entrypoint": None,
                "environment": {"A": "1"},
                "healthcheck": {"test": ["CMD", "true"], "interval": "1s", "retries": 5},
                "labels": {"traefik.enable": "true"},
                "logging": {"driver": "json-file", "options": {"max-size": "10m"}},
                "networks": {"default": None},
                "ports": [{"mode": "ingress", "host_ip": "127.0.0.1", "target": 80, "published": "8080"}],
                "volumes": [
                    {"type": "bind", "source": str(folder / "site"), "target": "/srv", "read_only": True,
                     "bind": {"create_host_path": True}},
                    {"type": "volume", "source": "data", "target": "/data", "volume": {}},
                    {"type": "tmpfs", "target": "/tmp"},
                ],
                "depends_on": {"api": {"condition": "service_healthy", "required": True}},
                "post_start": [{"command": ["true"], "user": "root"}],
                "deploy": {"resources": {"limits": {"cpus": 0.5, "memory": "52428800"}}, "placement": {}},
                "x-notes": {"anything": ["goes", {"here": 1}]},
            },
            "api": {"build": {"context": str(folder / "api"), "dockerfile": "Dockerfile", "tags": [f"{STACK}-api:1"]},
                    "image": f"{STACK}-api", "security_opt": ["no-new-privileges:true"], "cap_drop": ["ALL"]},
        },
        "networks": {"default": {"name": f"{STACK}_default", "ipam": {}}},
        "volumes": {"data": {"name": f"{STACK}_data"}},
        "secrets": {"token": {"name": f"{STACK}_token", "file": str(folder / "token.txt")}},
        "x-compose-agent": {"target": "compose"},
    }  # fmt: skip
    result = judge(folder, model)
    assert result.allowed, result.verdict


@pytest.mark.parametrize(
    ("model", "path"),
    [
        (service(annotations={"run.oci.hooks": "x"}), "services.web.annotations"),
        (service(teleport_host=True), "services.web.teleport_host"),
        (
            {"services": {"web": {"build": {"dockerfile_inline": "FROM scratch", "frobnicate": 1}}}},
            "services.web.build.frobnicate",
        ),
        (
            service(networks={"default": {"link_local_ips": ["169.254.1.1"]}}),
            "services.web.networks.default.link_local_ips",
        ),
        (service(credential_spec={"file": "/etc/x"}), "services.web.credential_spec"),
        ({"wormholes": {}}, "wormholes"),
        ({"configs": {"c": {"content": "x", "template_driver": "golang"}}}, "configs.c.template_driver"),
        (service(cap_drop={"ALL": True}), "services.web.cap_drop"),
        (service(image={"name": "busybox"}), "services.web.image"),
    ],
)
def test_a_key_or_shape_the_allowlist_does_not_know_is_refused_with_its_path(
    folder: Path, model: dict[str, Any], path: str
) -> None:
    result = judge(folder, model)
    assert result.verdict.rules == ["unknown_key"], result.verdict
    assert values(result, "unknown_key")[0].startswith(f"{path} ")
    allow = result.violations[0].allow
    assert f"policy.stacks.{STACK}.allow_keys" in allow


def test_the_operator_allows_an_unknown_key_for_one_stack_only(folder: Path) -> None:
    model = service(annotations={"a": "b"}, isolation="default")
    policy = Policy(stacks={STACK: StackRules(allow_keys=("services.*.annotations",))})
    assert values(judge(folder, model, policy), "unknown_key") == [
        "services.web.isolation is a key the guard does not know (Windows isolation modes; not used on Linux engines)"
    ]
    other = Policy(stacks={"other": StackRules(allow_keys=("services.*.annotations", "services.*.isolation"))})
    assert len(values(judge(folder, model, other), "unknown_key")) == 2
    assert judge(folder, model, Policy(stacks={STACK: StackRules(allow=("unknown_key",))})).allowed


@pytest.mark.parametrize(
    ("model", "rule"),
    [
        (service(use_api_socket=True), "docker_socket"),
        (mount("/var/run/docker.sock"), "docker_socket"),
        (mount("/run"), "docker_socket"),
        (service(volumes=[{"type": "npipe", "source": "x", "target": "/s"}]), "host_bind"),
        (mount("/srv"), "host_bind"),
        (service(privileged=True), "privileged"),
        (service(post_start=[{"command": ["id"], "privileged": True}]), "privileged"),
        (service(develop={"watch": [{"path": "/etc", "action": "sync"}]}), "outside_files"),
        (service(develop={"watch": [{"path": "/x", "action": "sync", "exec": {"privileged": True}}]}), "privileged"),
        (service(cap_add=["NET_ADMIN"]), "capabilities"),
        (service(pid="host"), "host_namespaces"),
        (service(cgroup="host"), "host_namespaces"),
        (service(network_mode="container:gateway"), "host_namespaces"),
        (service(gpus=[{"driver": "nvidia"}]), "devices"),
        (service(runtime="nvidia"), "devices"),
        (service(deploy={"resources": {"reservations": {"generic_resources": [{}]}}}), "devices"),
        (service(provider={"type": "./run.sh"}), "provider"),
        (service(models={"m": None}), "provider"),
        ({"models": {"m": {"model": "ai/x"}}}, "provider"),
        (service(security_opt=["seccomp=unconfined"]), "security_opt"),
        (service(volumes_from=["container:x"]), "volumes_from"),
        (service(oom_score_adj=-500), "host_resources"),
        (service(logging={"driver": "syslog", "options": {"syslog-address": "tcp://127.0.0.1:22"}}), "logging"),
        (service(logging={"driver": "json-file", "options": {"fluentd-address": "127.0.0.1"}}), "logging"),
        (service(logging={"options": {"syslog-address": "udp://127.0.0.1:514"}}), "logging"),
        (service(labels={"com.docker.compose.project": "other"}), "reserved_labels"),
        (service(labels=["Com.Docker.Compose.Service=x"]), "reserved_labels"),
        (service(build={"context": "/x", "labels": {"com.docker.compose.project": "o"}}), "reserved_labels"),
        (service(deploy={"labels": {"com.docker.stack.namespace": "o"}}), "reserved_labels"),
        (vol(labels={"com.docker.compose.project": "o"}), "reserved_labels"),
        (service(image="localhost:5000/x"), "registry"),
        (service(image="127.1:5000/x"), "registry"),
        (service(image="2130706433:5000/x"), "registry"),
        (service(image="[::1]:5000/x"), "registry"),
        (service(image="169.254.169.254/x"), "registry"),
        (service(image="registry.localhost/x"), "registry"),
        (service(volumes=[{"type": "image", "source": "127.0.0.1:5000/x", "target": "/i"}]), "registry"),
        (service(build={"context": "/x", "cache_from": ["type=registry,ref=localhost:5000/c"]}), "registry"),
        (service(build={"context": "/x", "cache_to": ["type=s3,bucket=b"]}), "registry"),
        (service(build={"context": "/x", "additional_contexts": {"b": "docker-image://[::1]/x"}}), "registry"),
        (service(build={"context": "https://github.com/x/y.git"}), "outside_files"),
        (service(build={"context": "git@github.com:x/y.git"}), "outside_files"),
        (service(build={"context": "/x", "additional_contexts": {"b": "https://example.com/x.tar"}}), "outside_files"),
        (service(build={"context": "/x", "cache_to": ["type=local,dest=/var/lib"]}), "outside_files"),
        (service(build={"context": "/x", "network": "host"}), "host_namespaces"),
        (service(build={"context": "/x", "network": "other_default"}), "external_networks"),
        (service(build={"context": "/x", "entitlements": ["security.insecure"]}), "privileged"),
        (service(build={"context": "/x", "tags": ["busybox:latest"]}), "namespace"),
        (service(build={"context": "/x"}, image="othershop-web"), "namespace"),
        (net(driver="macvlan"), "network_drivers"),
        (net(driver_opts={"com.docker.network.bridge.name": "docker0"}), "network_drivers"),
        (net(ipam={"config": [{"subnet": "10.0.0.0/8"}]}), "network_drivers"),
        (net(ipam={"driver": "plugin"}), "network_drivers"),
        ({"networks": {"n": {"name": "host", "external": True}}}, "host_namespaces"),
        ({"networks": {"n": {"name": "compose-agent_default", "external": True}}}, "external_networks"),
        ({"networks": {"n": {"name": "othershop_default"}}}, "external_networks"),
        ({"volumes": {"v": {"name": "othershop_data"}}}, "external_volumes"),
        ({"volumes": {"v": {"name": "x", "external": True}}}, "external_volumes"),
        (vol(driver="local-persist"), "volume_drivers"),
        (vol(driver_opts={"type": "none", "o": "bind", "device": "etc"}), "host_bind"),
        (vol(driver_opts={"type": "none", "o": "bind,shared", "device": "/x"}), "host_bind"),
        (vol(driver_opts={"type": "nfs", "o": "addr=10.0.0.1", "device": ":/"}), "host_bind"),
        ({"secrets": {"s": {"name": "x", "external": True}}}, "external_secrets"),
        ({"configs": {"c": {"name": f"{STACK}_c", "file": "/etc/passwd"}}}, "outside_files"),
        (mount("/x", bind={"propagation": "rshared"}), "host_bind"),
    ],
)  # fmt: skip
def test_each_rule_fires_on_its_key(folder: Path, model: dict[str, Any], rule: str) -> None:
    result = judge(folder, model)
    assert rule in result.verdict.rules, result.verdict
    assert "unknown_key" not in result.verdict.rules or rule == "unknown_key", result.verdict


def test_every_rule_has_a_reason_and_every_refusal_names_a_known_rule() -> None:
    assert all(RULES.values())
    for path, key in gateway.policy.allowlist.TABLE.items():
        assert not (key.unknown and key.check), path


def test_a_name_belongs_to_the_longest_project_it_starts_with() -> None:
    assert namespace_owner("a_b_data", "a", ["a_b"]) == "a_b"
    assert namespace_owner("a_data", "a", ["a_b"]) == "a"
    assert namespace_owner("a_b_data", "a_b", ["a"]) == "a_b"
    assert namespace_owner("ab_data", "a", []) is None
    assert namespace_owner("a-web", "a", [], "-_/") == "a"
    assert namespace_owner("compose-agent_state", "compose", ["compose-agent"]) == "compose-agent"


def test_a_stack_cannot_name_another_stacks_or_the_gateways_resources_by_its_prefix(folder: Path) -> None:
    # shop's volume key x_data becomes shop_x_data: the name of stack shop_x's volume "data".
    model = {
        "volumes": {"x_data": {"name": f"{STACK}_x_data"}},
        "networks": {"x_default": {"name": f"{STACK}_x_default"}},
    }
    assert judge(folder, model).allowed
    refused = judge(folder, model, neighbours=frozenset({f"{STACK}_x"}))
    assert refused.verdict.rules == ["external_volumes", "external_networks"]
    assert f"inside {STACK}_x's namespace" in refused.violations[0].value
    gateway = judge(
        folder, {"volumes": {"agent_state": {"name": f"{STACK}_agent_state"}}}, self_project=f"{STACK}_agent"
    )
    assert gateway.verdict.rules == ["external_volumes"]
    container = service(container_name=f"{STACK}_x-web-1")
    assert judge(folder, container).allowed
    assert judge(folder, container, neighbours=frozenset({f"{STACK}_x"})).verdict.rules == ["namespace"]


def test_a_resource_that_exists_is_the_stacks_only_if_the_engine_says_so(folder: Path) -> None:
    owners = {("volume", f"{STACK}_data"): "othershop", ("network", f"{STACK}_default"): ""}
    asked: list[tuple[str, str]] = []

    def lookup(kind: str, name: str) -> str | None:
        asked.append((kind, name))
        return owners.get((kind, name))

    model = {
        "volumes": {"data": {"name": f"{STACK}_data"}, "cache": {"name": f"{STACK}_cache"}},
        "networks": {"default": {"name": f"{STACK}_default"}},
    }
    result = judge(folder, model, owners=lookup)
    assert result.verdict.rules == ["external_volumes", "external_networks"]
    assert "belongs to project othershop" in values(result, "external_volumes")[0]
    assert "created outside Compose" in values(result, "external_networks")[0]
    assert ("volume", f"{STACK}_cache") in asked
    listed = Policy(stacks={STACK: StackRules(resources=(f"{STACK}_data", f"{STACK}_default"))})
    assert judge(folder, model, listed, owners=lookup).allowed


def test_a_container_name_of_another_project_is_refused(folder: Path) -> None:
    model = service(container_name="watched")
    assert judge(folder, model).allowed
    assert judge(folder, service(container_name="compose-agent"), self_project="compose-agent").verdict.rules == [
        "namespace"
    ]
    taken = judge(folder, model, owners=lambda kind, name: "compose-agent" if kind == "container" else None)
    assert values(taken, "namespace") == ["container_name watched is taken by a container of project compose-agent"]


def test_compose_steering_variables_in_dotenv_are_refused_but_naming_ones_are_not(folder: Path) -> None:
    names = ("COMPOSE_PROJECT_NAME", "COMPOSE_PROFILES", "TAG", "COMPOSE_BAKE", "COMPOSE_EXPERIMENTAL_GIT_REMOTE")
    result = judge(folder, {}, dotenv=names)
    assert values(result, "compose_env") == [
        ".env sets COMPOSE_BAKE, which steers Compose itself",
        ".env sets COMPOSE_EXPERIMENTAL_GIT_REMOTE, which steers Compose itself",
    ]


def test_publishing_a_reserved_port_is_refused(folder: Path) -> None:
    model = service(ports=[{"target": 80, "published": "8760-8770", "protocol": "tcp"}])
    assert judge(folder, model).allowed
    assert judge(folder, model, Policy(reserved_ports=(8765,))).verdict.rules == ["ports"]


@pytest.mark.parametrize(
    "model",
    [
        service(volumes=[{"type": "bind", "source": "/srv/a\x00b", "target": "/x"}]),
        service(labels={"a\u202eb": "x"}),
        service(labels={"a": "x\x00"}),
        {"services": {"web\x07": {"image": "busybox"}}},
        {"volumes": {"v": {"name": "shop_v\x1b"}}},
        service(env_file=[{"path": "/etc/\x00shadow"}]),
    ],
)
def test_a_control_character_in_a_path_name_or_label_is_an_error_verdict_not_an_exception(
    folder: Path, model: dict[str, Any]
) -> None:
    result = judge(folder, model)
    assert not result.allowed and result.error_code == "control_characters"
    assert result.verdict.error and "control character" in result.verdict.error


def test_a_check_that_fails_is_the_stacks_error_verdict(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> None:
        raise KeyError("a bug in a check")

    key = gateway.policy.allowlist.TABLE["services.*.image"]
    monkeypatch.setitem(gateway.policy.allowlist.TABLE, "services.*.image", key.__class__(scalar=True, check=broken))
    result = judge(folder, service())
    assert not result.allowed and result.error_code == "judge_failed" and "KeyError" in (result.verdict.error or "")


def test_a_verdict_lists_rules_in_the_order_of_the_rule_table(folder: Path) -> None:
    result = judge(folder, service(network_mode="host", privileged=True, cap_add=["X"]))
    assert result.verdict.rules == ["privileged", "capabilities", "host_namespaces"]


def test_an_operator_exception_allows_exactly_that_rule_for_that_stack(folder: Path) -> None:
    model = service(use_api_socket=True, privileged=True)
    policy = Policy(stacks={STACK: StackRules(allow=("docker_socket",))})
    assert judge(folder, model, policy).verdict.rules == ["privileged"]


def test_the_security_doc_explains_every_rule_and_every_deliberately_unknown_key() -> None:
    doc = (Path(__file__).resolve().parents[3] / "docs" / "security.md").read_text()
    for rule in RULES:
        assert f"| `{rule}` |" in doc, f"docs/security.md has no row for the rule {rule}"
    for path, key in gateway.policy.allowlist.TABLE.items():
        if key.unknown:
            assert f"`{path.rsplit('.', 1)[-1]}`" in doc, f"docs/security.md does not name {path}"


def vault(**references: str) -> dict[str, Any]:
    return {**service(), "x-compose-agent": {"secrets": references}}


def test_a_stack_takes_secrets_from_its_own_vault_folder_and_from_what_the_operator_shares() -> None:
    own = {"A": f"secret/stacks/{STACK}#db", "B": f"secret/stacks/{STACK}/payments/api#key"}
    foreign = {
        "C": "secret/stacks/bank#db",  # another stack's folder
        "D": f"secret/stacks/{STACK}x#db",  # a stack whose name starts with this one's
        "E": f"kv/stacks/{STACK}#db",  # the same path on another mount
        "F": "secret/stacks#db",  # the folder of every stack
        "G": "secret/shared/smtp#password",
    }
    folder = Path("/nowhere")
    assert judge(folder, vault(**own)).allowed
    refused = judge(folder, vault(**own, **foreign)).verdict
    assert refused.rules == ["vault_paths"]
    assert sorted(v.value.split(" ")[0] for v in refused.violations) == [
        f"x-compose-agent.secrets.{name}" for name in "CDEFG"
    ]
    [smtp] = [v for v in refused.violations if v.value.startswith("x-compose-agent.secrets.G ")]
    assert smtp.value == (
        "x-compose-agent.secrets.G reads secret/shared/smtp, outside the Vault paths this stack may read "
        f"(secret/stacks/{STACK})"
    )
    assert (
        smtp.allow == f'the path in policy.stacks.{STACK}.secret_paths, or "vault_paths" in policy.stacks.{STACK}.allow'
    )

    shared = Policy(stacks={STACK: StackRules(secret_paths=("secret/shared/smtp",))})
    assert judge(folder, vault(**own, G=foreign["G"]), shared).allowed
    assert judge(folder, vault(C=foreign["C"]), shared).verdict.rules == ["vault_paths"]
    # The operator's own layout, with {stack}; and none at all.
    layout = Policy(secret_paths=("kv/{stack}/prod", "kv/common"))
    assert judge(folder, vault(A=f"kv/{STACK}/prod/db#pw", B="kv/common#ca"), layout).allowed
    assert judge(folder, vault(A=f"secret/stacks/{STACK}#db"), layout).verdict.rules == ["vault_paths"]
    assert judge(folder, vault(A=f"secret/stacks/{STACK}#db"), Policy(secret_paths=())).verdict.rules == ["vault_paths"]
    # The whole rule, for a stack the operator trusts with every path the gateway's token reads.
    assert judge(folder, vault(**foreign), Policy(stacks={STACK: StackRules(allow=("vault_paths",))})).allowed


@pytest.mark.parametrize(
    "path",
    ["secret", "/secret/x", "secret/../x", "secret/x/", "secret//x", "secret/x{stack}", "secret/{other}", "secret/x#k"],
)
def test_a_secret_path_of_the_policy_is_a_mount_and_a_path_inside_it(path: str) -> None:
    with pytest.raises(ValidationError, match="not Vault paths like secret/stacks/{stack}"):
        Policy(secret_paths=(path,))
    with pytest.raises(ValidationError, match="not Vault paths"):
        StackRules(secret_paths=(path,))
    assert Policy(secret_paths=("secret/stacks/{stack}", "kv/a.b/c-d_e")).secret_paths_of("x") == (
        "secret/stacks/x",
        "kv/a.b/c-d_e",
    )

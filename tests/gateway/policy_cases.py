"""The stacks the policy tests judge: hostile ones with the rule ids each must be refused by, an
ordinary one that must be allowed and run, and the marker of the files outside every stack.

``test_policy.py`` judges them without the engine, ``test_policy_engine.py`` drives them through
``up`` on the real engine; both read them from here so the two can never judge different cases.
"""

from __future__ import annotations

from tests.conftest import STACK_FILES, WEB_SERVICE

__all__ = ["HOSTILE", "ORDINARY", "OUTSIDE_MARKER", "ordinary_files"]

OUTSIDE_MARKER = "outside-marker-7d1c"

# (case id, compose file, extra files in the folder, the rule ids the guard must name)
HOSTILE: list[tuple[str, str, dict[str, str], set[str]]] = [
    (
        "bind_root",
        "services:\n  a:\n    image: {image}\n    volumes: ['/:/host']\n",
        {},
        {"host_bind", "docker_socket"},
    ),
    (
        "bind_socket",
        "services:\n  a:\n    image: {image}\n    volumes: ['/var/run/docker.sock:/var/run/docker.sock']\n",
        {},
        {"docker_socket", "host_bind"},
    ),
    ("network_host", "services:\n  a:\n    image: {image}\n    network_mode: host\n", {}, {"host_namespaces"}),
    (
        "pid_host_ptrace",
        "services:\n  a:\n    image: {image}\n    pid: host\n    cap_add: [SYS_PTRACE]\n",
        {},
        {"host_namespaces", "capabilities"},
    ),
    ("cap_sys_admin", "services:\n  a:\n    image: {image}\n    cap_add: [SYS_ADMIN]\n", {}, {"capabilities"}),
    ("privileged", "services:\n  a:\n    image: {image}\n    privileged: true\n", {}, {"privileged"}),
    (
        "seccomp_unconfined",
        "services:\n  a:\n    image: {image}\n    security_opt: ['seccomp:unconfined']\n",
        {},
        {"security_opt"},
    ),
    (
        "apparmor_unconfined",
        "services:\n  a:\n    image: {image}\n    security_opt: ['apparmor=unconfined']\n",
        {},
        {"security_opt"},
    ),
    (
        "label_disable",
        "services:\n  a:\n    image: {image}\n    security_opt: ['label:disable']\n",
        {},
        {"security_opt"},
    ),
    (
        "volumes_from_container",
        "services:\n  a:\n    image: {image}\n    volumes_from: ['container:compose-agent']\n",
        {},
        {"volumes_from"},
    ),
    (
        "volume_binds_root",
        "services:\n  a:\n    image: {image}\n    volumes: ['vol:/v']\n"
        "volumes:\n  vol:\n    driver_opts: {type: none, o: bind, device: /}\n",
        {},
        {"host_bind", "docker_socket"},
    ),
    (
        "volume_mounts_a_device",
        "services:\n  a:\n    image: {image}\n    volumes: ['vol:/v']\n"
        "volumes:\n  vol:\n    driver_opts: {type: ext4, device: /dev/sda1}\n",
        {},
        {"host_bind"},
    ),
    (
        "env_file_outside",
        "services:\n  a:\n    image: {image}\n    env_file: {outside}/secret.env\n",
        {},
        {"outside_files"},
    ),
    ("env_file_shadow", "services:\n  a:\n    image: {image}\n    env_file: [/etc/shadow]\n", {}, {"outside_files"}),
    ("include_outside", "include:\n  - {outside}/other.yaml\nservices: {}\n", {}, {"outside_files"}),
    (
        "include_relative_escape",
        "include:\n  - path: ../../outside/other.yaml\nservices:\n  a:\n    image: {image}\n",
        {},
        {"outside_files"},
    ),
    (
        "extends_outside",
        "services:\n  a:\n    extends:\n      file: {outside}/other.yaml\n      service: base\n",
        {},
        {"outside_files"},
    ),
    (
        "secret_file_outside",
        "services:\n  a:\n    image: {image}\n    secrets: [s]\nsecrets:\n  s:\n    file: {outside}/secret.env\n",
        {},
        {"outside_files"},
    ),
    (
        "config_file_outside",
        "services:\n  a:\n    image: {image}\n    configs: [c]\nconfigs:\n  c:\n    file: /etc/passwd\n",
        {},
        {"outside_files"},
    ),
    ("build_context_outside", "services:\n  a:\n    build: {outside}\n", {}, {"outside_files"}),
    (
        "dockerfile_outside",
        "services:\n  a:\n    build:\n      context: .\n      dockerfile: {outside}/Dockerfile\n",
        {"Dockerfile": "FROM scratch\n"},
        {"outside_files"},
    ),
    (
        "label_file_outside",
        "services:\n  a:\n    image: {image}\n    label_file: {outside}/secret.env\n",
        {},
        {"outside_files"},
    ),
    ("devices", "services:\n  a:\n    image: {image}\n    devices: ['/dev/mem:/dev/mem']\n", {}, {"devices"}),
    (
        "device_cgroup_rules",
        "services:\n  a:\n    image: {image}\n    device_cgroup_rules: ['a *:* rwm']\n",
        {},
        {"devices"},
    ),
    (
        "ipc_of_another_container",
        "services:\n  a:\n    image: {image}\n    ipc: 'container:compose-agent'\n",
        {},
        {"host_namespaces"},
    ),
    (
        "network_of_another_container",
        "services:\n  a:\n    image: {image}\n    network_mode: 'container:compose-agent'\n",
        {},
        {"host_namespaces"},
    ),
    ("userns_host", "services:\n  a:\n    image: {image}\n    userns_mode: host\n", {}, {"host_namespaces"}),
    (
        "host_network_by_name",
        "services:\n  a:\n    image: {image}\n    networks: [h]\nnetworks:\n  h:\n    external: true\n    name: host\n",
        {},
        {"host_namespaces"},
    ),
    (
        "provider_runs_a_host_program",
        "services:\n  a:\n    provider:\n      type: ./run.sh\n",
        {"run.sh": "#!/bin/sh\ntouch PWNED\n"},
        {"provider"},
    ),
    (
        "external_volume_of_the_gateway",
        "services:\n  a:\n    image: {image}\n    volumes: ['store:/s']\n"
        "volumes:\n  store:\n    external: true\n    name: compose-agent_compose-agent-state\n",
        {},
        {"external_volumes"},
    ),
    (
        "volume_named_into_another_stack",
        "services:\n  a:\n    image: {image}\n    volumes: ['store:/s']\n"
        "volumes:\n  store:\n    name: othershop_data\n",
        {},
        {"external_volumes"},
    ),
    (
        "external_network",
        "services:\n  a:\n    image: {image}\n    networks: [n]\n"
        "networks:\n  n:\n    external: true\n    name: compose-agent_default\n",
        {},
        {"external_networks"},
    ),
    (
        "volume_driver_plugin",
        "services:\n  a:\n    image: {image}\n    volumes: ['vol:/v']\nvolumes:\n  vol:\n    driver: local-persist\n",
        {},
        {"volume_drivers"},
    ),
    (
        "oom_and_cgroup_escape",
        "services:\n  a:\n    image: {image}\n    cgroup_parent: /system.slice\n    oom_kill_disable: true\n",
        {},
        {"host_resources"},
    ),
    (
        "privileged_hook",
        "services:\n  a:\n    image: {image}\n    post_start:\n      - command: ['true']\n        privileged: true\n",
        {},
        {"privileged"},
    ),
    (
        "build_host_network_and_insecure_entitlement",
        "services:\n  a:\n    build:\n      context: .\n      network: host\n      entitlements: [security.insecure]\n",
        {"Dockerfile": "FROM scratch\n"},
        {"host_namespaces", "privileged"},
    ),
    (
        "build_additional_context_outside",
        "services:\n  a:\n    build:\n      context: .\n      additional_contexts:\n        etc: /etc\n",
        {"Dockerfile": "FROM scratch\n"},
        {"outside_files"},
    ),
    (
        "privileged_behind_a_profile",
        "services:\n  a:\n    image: {image}\n"
        "  debug:\n    image: {image}\n    profiles: [debug]\n    privileged: true\n",
        {},
        {"privileged"},
    ),
    ("include_with_a_variable", "include:\n  - ${HOME}/other.yaml\nservices: {}\n", {}, {"outside_files"}),
    (
        "nested_include_escapes",
        "include:\n  - sub/inner.yaml\nservices: {}\n",
        {"sub/inner.yaml": "include:\n  - ../../../outside/other.yaml\nservices: {}\n"},
        {"outside_files"},
    ),
    (
        "extends_hidden_behind_a_merge_key",
        "x-base: &base\n  extends:\n    file: {outside}/other.yaml\n    service: base\n"
        "services:\n  a:\n    <<: *base\n",
        {},
        {"outside_files"},
    ),
]


# Everything an ordinary stack does: relative binds, named and tmpfs volumes, loopback ports,
# healthchecks, depends_on, a build context, env files, a secret, extends and include, all inside.
# It also runs: every service starts and stays up, so the engine tests bring it up for real.
ORDINARY = (
    "include:\n  - extra/compose.yaml\nservices:"
    + WEB_SERVICE
    + """    ports: ["127.0.0.1::8080"]
  api:
    build: ./api
    init: true
    command: ["sleep", "3600"]
    env_file: [app.env]
    environment:
      TAG: ${TAG}
    depends_on:
      web:
        condition: service_healthy
    secrets: [token]
    security_opt: ["no-new-privileges:true"]
    cap_drop: [ALL]
    volumes:
      - cache:/cache
      - type: tmpfs
        target: /tmp
  worker:
    extends:
      file: common.yaml
      service: base
    network_mode: service:web
volumes:
  data:
  cache:
    driver_opts: {type: tmpfs, device: tmpfs}
secrets:
  token:
    file: ./token.txt
"""
)


def ordinary_files(image: str) -> dict[str, str]:
    """The files beside :data:`ORDINARY`; the services they define run ``image``.

    ``api/Dockerfile`` copies a ``busybox`` binary from its folder: put one there before building.
    """
    sleeper = f"    image: {image}\n    init: true\n    command: ['sleep', '3600']\n"
    return {
        **STACK_FILES,
        "api/Dockerfile": 'FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox","--install","-s","/bin"]\n',
        "app.env": "MODE=test\n",
        "token.txt": "t\n",
        ".env": "TAG=from-dotenv\n",
        "common.yaml": "services:\n  base:\n" + sleeper + "    env_file: app.env\n",
        "extra/compose.yaml": "services:\n  extra:\n" + sleeper + "    volumes: ['./data:/data']\n",
    }

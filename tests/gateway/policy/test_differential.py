"""The guard's reading against Compose's: for every YAML feature the strict loader accepts, both name
the same files.

Each stack below writes its references with one feature (flow style, quoting, block scalars,
anchors, merge keys, several documents, tags, long forms...). Every file a stack references carries
its own path as a marker that lands in Compose's model when Compose reads it: an env file as
``MARK_<n>=<path>``, a label file as ``mark.<n>=<path>``, an included or extended file as a
service variable, a ``.env`` through interpolation, a secret as its path. The files Compose read
are the markers in ``docker compose --profile '*' config --format json``; the files the guard read
are the reader's. They must be the same set.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from gateway.compose.cli import ComposeCli
from gateway.errors import ComposeFailed
from gateway.policy.reader import ReadRefused, read_stack
from tests.conftest import StackFactory

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

MARKED = ("MARK_", "EXT", "FROM", "DOT", "INC")


def env(path: str, n: int) -> dict[str, str]:
    return {path: f"MARK_{n}={path}\n"}


def labels(path: str, n: int) -> dict[str, str]:
    return {path: f"mark.{n}={path}\n"}


def included(path: str, name: str, extra: str = "") -> dict[str, str]:
    return {path: f"services:\n  inc-{name}:\n    image: busybox\n    environment:\n      FROM: {path}\n" + extra}


def extended(path: str, service: str = "base", extra: str = "") -> dict[str, str]:
    return {
        path: f"services:\n  {service}:\n    image: busybox\n    environment:\n      EXT_{service}: {path}\n" + extra
    }


# (compose file, the files beside it)
VARIANTS: dict[str, tuple[str, dict[str, str]]] = {
    "block_style": (
        "include:\n  - inc/one.yaml\n"
        "services:\n  web:\n    image: busybox\n    env_file:\n      - a.env\n      - sub/b.env\n"
        "    label_file: c.labels\n    secrets: [s]\n    extends:\n      file: ext/base.yaml\n      service: base\n"
        "secrets:\n  s:\n    file: ./token.txt\n",
        {
            **env("a.env", 1),
            **env("sub/b.env", 2),
            **labels("c.labels", 3),
            **included("inc/one.yaml", "one"),
            **extended("ext/base.yaml"),
            "token.txt": "t\n",
        },
    ),
    "flow_style": (
        "{include: [inc/one.yaml], services: {web: {image: busybox, env_file: [a.env], label_file: [c.labels],"
        " extends: {file: ext/base.yaml, service: base}}}}\n",
        {**env("a.env", 1), **labels("c.labels", 3), **included("inc/one.yaml", "one"), **extended("ext/base.yaml")},
    ),
    "quoting": (
        "services:\n  web:\n    image: busybox\n    env_file: ['a.env', \"sub/b.env\", \"\\x63.env\", 'it''s.env']\n"
        '    "label\\x5ffile": "c.labels"\n',
        {**env("a.env", 1), **env("sub/b.env", 2), **env("c.env", 3), **env("it's.env", 4), **labels("c.labels", 5)},
    ),
    "block_scalars": (
        "services:\n  web:\n    image: busybox\n    env_file:\n"
        "      - |-\n        a.env\n      - >-\n        sub/b.env\n",
        {**env("a.env", 1), **env("sub/b.env", 2)},
    ),
    "anchors_and_aliases": (
        "x-files: &files [a.env, sub/b.env]\nx-label: &label c.labels\n"
        "services:\n  web:\n    image: busybox\n    env_file: *files\n    label_file: *label\n"
        "  api:\n    image: busybox\n    env_file: *files\n",
        {**env("a.env", 1), **env("sub/b.env", 2), **labels("c.labels", 3)},
    ),
    "merge_keys_explicit_wins": (
        "x-base: &base\n  image: busybox\n  env_file: [unused.env]\n  label_file: c.labels\n"
        "services:\n  web:\n    <<: *base\n    env_file: [a.env]\n",
        {**env("a.env", 1), **env("unused.env", 2), **labels("c.labels", 3)},
    ),
    "merge_list_first_wins": (
        "x-a: &a {env_file: [a.env]}\nx-b: &b {env_file: [unused.env], label_file: c.labels}\n"
        "services:\n  web:\n    image: busybox\n    <<: [*a, *b]\n",
        {**env("a.env", 1), **env("unused.env", 2), **labels("c.labels", 3)},
    ),
    "merge_carries_extends": (
        "x-ext: &ext\n  extends: {file: ext/base.yaml, service: base}\nservices:\n  web:\n    <<: *ext\n",
        extended("ext/base.yaml"),
    ),
    "several_documents": (
        "services:\n  web:\n    image: busybox\n    env_file: [a.env]\n---\n"
        "services:\n  api:\n    image: busybox\n    env_file: [sub/b.env]\n",
        {**env("a.env", 1), **env("sub/b.env", 2)},
    ),
    "core_and_compose_tags_elsewhere": (
        "services: !!map\n  web: !override\n    image: !!str busybox\n    env_file: [a.env]\n"
        "    labels: !reset {}\n    x-note: !!int 5\n",
        env("a.env", 1),
    ),
    "explicit_key_syntax": (
        "services:\n  web:\n    image: busybox\n    ? env_file\n    : [a.env]\n",
        env("a.env", 1),
    ),
    "long_forms": (
        "services:\n  web:\n    image: busybox\n    env_file:\n      - path: a.env\n        required: true\n"
        "      - path: missing.env\n        required: false\n      - path: raw.env\n        format: raw\n",
        {**env("a.env", 1), **env("raw.env", 2)},
    ),
    "include_long_form": (
        "include:\n  - path: [two/main.yaml, two/override.yaml]\n    env_file: two.env\n"
        "    project_directory: two/project\nservices: {}\n",
        {
            **included("two/main.yaml", "two", "      INC: ${INCFILE:-none}\n    label_file: two.labels\n"),
            **included("two/override.yaml", "three"),
            "two.env": "INCFILE=two.env\n",
            **labels("two/project/two.labels", 4),
        },
    ),
    "nested_include_and_its_dotenv": (
        "include: [inc/outer.yaml]\nservices: {}\n",
        {
            **included("inc/outer.yaml", "outer", "include: [deeper/inner.yaml]\n"),
            **included("inc/deeper/inner.yaml", "inner", "      INC: ${INCFILE:-none}\n    env_file: i.env\n"),
            "inc/deeper/.env": "INCFILE=inc/deeper/.env\n",
            **env("inc/deeper/i.env", 5),
        },
    ),
    "extends_chains": (
        "services:\n  web:\n    extends: {file: ext/base.yaml, service: base}\n"
        "  api:\n    extends: web\n    env_file: a.env\n",
        {
            **extended(
                "ext/base.yaml",
                "base",
                "    extends: root\n    env_file: b.env\n"
                "  root:\n    image: busybox\n    extends: {file: ../far/root.yaml, service: far}\n"
                "    environment:\n      EXT_root: ext/base.yaml\n"
                "  unused:\n    image: busybox\n    env_file: unused.env\n",
            ),
            **extended("far/root.yaml", "far"),
            **env("a.env", 1),
            **env("ext/b.env", 2),
            **env("ext/unused.env", 3),
        },
    ),
    "override_file_beside_is_not_read": (
        "services:\n  web:\n    image: busybox\n    env_file: a.env\n",
        {**env("a.env", 1), **env("o.env", 2), "compose.override.yaml": "services:\n  web:\n    env_file: o.env\n"},
    ),
    "dotenv_and_profiles": (
        "services:\n  web:\n    image: busybox\n    environment:\n      DOT: ${DOTFILE:-none}\n"
        "  debug:\n    image: busybox\n    profiles: [debug]\n    env_file: a.env\n",
        {".env": "DOTFILE=.env\n", **env("a.env", 1)},
    ),
}


def write(folder: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text)


def compose_read(model: dict[str, Any], folder: Path) -> set[str]:
    """The files whose markers are in Compose's model."""
    found: set[str] = set()
    for spec in (model.get("services") or {}).values():
        for key, value in (spec.get("environment") or {}).items():
            if key.startswith(MARKED) and value not in (None, "none"):
                found.add(str(value))
        for key, value in (spec.get("labels") or {}).items():
            if key.startswith("mark."):
                found.add(str(value))
    for kind in ("secrets", "configs"):
        for spec in (model.get(kind) or {}).values():
            if spec.get("file"):
                found.add(os.path.relpath(spec["file"], folder))
    return found


def guard_read(folder: Path) -> set[str]:
    """The files the reader read or found referenced, existing, besides the compose file itself."""
    reading = read_stack(folder, [folder / "compose.yaml"])
    named = {os.path.relpath(f.path, reading.folder) for f in reading.files}
    for ref in reading.references:
        if ref.kind in ("secret file", "config file"):
            named |= {os.path.relpath(p, reading.folder) for p in ref.paths if p.exists()}
    return named - {"compose.yaml"}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
async def test_the_guard_and_compose_read_the_same_files(variant: str, stacks: StackFactory) -> None:
    compose, files = VARIANTS[variant]
    name = stacks.make(compose, files=files)
    folder = stacks.root / name
    cli = ComposeCli.locate(None, os.environ)
    output = await cli.run(name, ["config", "--format", "json"], compose_file=folder / "compose.yaml", cwd=folder,
                           profiles=["*"])  # fmt: skip
    by_compose = compose_read(json.loads(output.stdout), folder)
    by_guard = guard_read(folder)
    assert by_compose, "the variant must make Compose read something"
    assert by_guard == by_compose
    assert not {"unused.env", "ext/unused.env"} & by_guard


@pytest.mark.parametrize(
    "compose",
    [
        "services:\n  web:\n    image: busybox\n    image: nginx\n",
        "services:\n  web:\n    image: busybox\n    'image': nginx\n",
        "x-a: &a {image: busybox}\nservices:\n  web:\n    <<: *a\n    <<: *a\n",
    ],
)
async def test_compose_refuses_duplicate_keys_as_the_guard_does(compose: str, stacks: StackFactory) -> None:
    name = stacks.make(compose)
    folder = stacks.root / name
    cli = ComposeCli.locate(None, os.environ)
    with pytest.raises(ComposeFailed, match="already defined"):
        await cli.run(name, ["config", "--format", "json"], compose_file=folder / "compose.yaml", cwd=folder)
    with pytest.raises(ReadRefused) as caught:
        read_stack(folder, [folder / "compose.yaml"])
    assert caught.value.code == "duplicate_key"


async def test_a_reset_service_is_read_by_the_guard_though_compose_drops_it(stacks: StackFactory) -> None:
    # The one place the reading is wider on purpose: a !reset node is still read (and judged) by the guard.
    name = stacks.make(
        "services:\n  web:\n    image: busybox\n    env_file: [a.env]\n---\n"
        "services:\n  web: !reset\n    env_file: [b.env]\n  api:\n    image: busybox\n",
        files={**env("a.env", 1), **env("b.env", 2)},
    )
    folder = stacks.root / name
    cli = ComposeCli.locate(None, os.environ)
    output = await cli.run(name, ["config", "--format", "json"], compose_file=folder / "compose.yaml", cwd=folder)
    assert compose_read(json.loads(output.stdout), folder) == set()
    assert guard_read(folder) == {"a.env", "b.env"}

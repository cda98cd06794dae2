"""The profiles a stack's ``.env`` turns on: read as Compose reads them, or refused (``dotenv_profiles``).

The judged model holds every profile and runs with an empty ``--env-file``, so the guard hands
Compose the ``.env``'s ``COMPOSE_PROFILES`` as ``--profile`` flags: for every form it accepts, the
services it turns on must be exactly those Compose itself turns on from the same ``.env``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.catalog import active_services
from gateway.compose.cli import ComposeCli
from gateway.policy.profiles import compose_profiles
from gateway.policy.reading import ReadRefused
from tests.conftest import random_name

COMPOSE = (
    "services:\n"
    "  a: {image: busybox}\n"
    "  dbg: {image: busybox, profiles: [debug]}\n"
    "  tl: {image: busybox, profiles: [tools, debug]}\n"
    "  x: {image: busybox, profiles: [x.y-z_1]}\n"
)
ACCEPTED = [
    "",
    "OTHER=1\n",
    "COMPOSE_PROFILES=debug\n",
    "COMPOSE_PROFILES=debug,tools\n",
    "COMPOSE_PROFILES=debug, tools\n",
    "COMPOSE_PROFILES= debug\n",
    'COMPOSE_PROFILES="tools"\n',
    "COMPOSE_PROFILES='x.y-z_1'\n",
    "export COMPOSE_PROFILES=debug\n",
    "COMPOSE_PROFILES=debug # the debugger\n",
    "COMPOSE_PROFILES: tools\n",
    "COMPOSE_PROFILES =tools\n",
    "COMPOSE_PROFILES=debug\nCOMPOSE_PROFILES=x.y-z_1\n",
    "COMPOSE_PROFILES=\n",
    "COMPOSE_PROFILES=*\n",
    "COMPOSE_PROFILES=debug,\n",
    "COMPOSE_PROFILES_EXTRA=debug\n",
]
REFUSED = [
    "COMPOSE_PROFILES=${P:-debug}\n",
    "COMPOSE_PROFILES=$P\n",
    'COMPOSE_PROFILES="debug # c"\n',
    'COMPOSE_PROFILES="de\\bug"\n',
    'COMPOSE_PROFILES="debug\n',
    "COMPOSE_PROFILES='debug' tools\n",
    "COMPOSE_PROFILES=debug#c\n",
    "COMPOSE_PROFILES=-debug\n",
]


@pytest.mark.parametrize("dotenv", REFUSED)
def test_a_profiles_value_the_guard_does_not_read_plainly_is_refused(dotenv: str) -> None:
    with pytest.raises(ReadRefused) as refused:
        compose_profiles(dotenv)
    assert refused.value.code == "dotenv_profiles"
    assert "COMPOSE_PROFILES" in str(refused.value)


@pytest.mark.docker
@pytest.mark.anyio
async def test_the_profiles_the_guard_reads_turn_on_what_compose_turns_on(tmp_path: Path) -> None:
    cli = ComposeCli.locate(None, os.environ)
    folder = tmp_path / "stack"
    folder.mkdir()
    (folder / "compose.yaml").write_text(COMPOSE)
    everything = {"services": {"a": {}, "dbg": {"profiles": ["debug"]}, "tl": {"profiles": ["tools", "debug"]},
                               "x": {"profiles": ["x.y-z_1"]}}}  # fmt: skip
    for dotenv in ACCEPTED:
        (folder / ".env").write_text(dotenv)
        ours = set(active_services(everything, compose_profiles(dotenv)))
        output = await cli.run(
            random_name("p"), ["config", "--services"], compose_file=folder / "compose.yaml", cwd=folder
        )
        assert ours == set(output.stdout.split()), dotenv

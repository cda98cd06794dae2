"""Real remote Docker engines for the tests: Docker-in-Docker containers reached over TLS and SSH, and swarms of them.

See README.md in this folder. The pytest fixtures live in ``fixtures.py`` (registered by tests/conftest.py).
"""

from __future__ import annotations

from tests.engines.engine import Engine, Via, in_parallel, start_engine
from tests.engines.errors import EngineError
from tests.engines.image import ensure_engine_image
from tests.engines.swarm import Node, Swarm, start_swarm

__all__ = [
    "Engine",
    "EngineError",
    "Node",
    "Swarm",
    "Via",
    "ensure_engine_image",
    "in_parallel",
    "start_engine",
    "start_swarm",
]

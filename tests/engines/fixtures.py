"""pytest plugin: real remote Docker engines for the tests (registered by tests/conftest.py).

- ``tls_engine``: an engine reached over ``tcp://IP:2376`` with TLS client certificates;
- ``ssh_engine``: an engine reached over ``ssh://root@IP`` (sshd, key authentication);
- ``swarm3``: a three-node swarm, its manager reached over TLS;
- ``engine_factory``: fresh engines or swarms for one test, removed after it;
- ``engine_image``: the engine image's tag (built once per recipe, see image.py).

The three shared ones are made once per session, side by side, when the first test needs one of
them: every one that the selected tests use starts then, so the session waits for the slowest, not
for the sum. Each comes with the suite's busybox test image loaded. After every test they are put
back as the test found them (unpaused; the swarm's nodes active and its services gone); at the end
of the session they are removed, whatever the tests did. Engines of a run that died are removed by
the next one (see leftovers.py).

Every test that uses them is marked ``dind`` and ``docker`` here, so ``-m 'not dind'`` deselects them.
"""

from __future__ import annotations

import logging
import secrets
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from functools import partial
from typing import Literal, Protocol

import pytest

from tests.engines.engine import Engine, in_parallel, start_engine
from tests.engines.errors import EngineError, run
from tests.engines.image import ensure_engine_image
from tests.engines.leftovers import ENGINE_LABEL, owner_labels, sweep
from tests.engines.swarm import Swarm, start_swarm

__all__ = ["EngineFactory"]

logger = logging.getLogger(__name__)

SHARED = ("tls_engine", "ssh_engine", "swarm3")
DIND_FIXTURES = frozenset({*SHARED, "engine_factory", "engine_image", "engine_launcher"})
_WANTED = pytest.StashKey[frozenset[str]]()


class _Running(Protocol):
    def remove(self) -> None: ...


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Before -m deselects: a test is marked by the engines it uses, however indirectly.
    for item in items:
        if DIND_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker("dind")
            item.add_marker("docker")


def pytest_collection_finish(session: pytest.Session) -> None:
    # After deselection: the shared engines this run will need, to start them all at once.
    used = {name for item in session.items for name in getattr(item, "fixturenames", ())}
    session.config.stash[_WANTED] = frozenset(used & set(SHARED))


def _reporter(config: pytest.Config) -> Callable[[str], None]:
    """Progress lines on the terminal, past pytest's capture: an image build takes minutes, and says so."""
    capture = config.pluginmanager.getplugin("capturemanager")
    terminal = config.pluginmanager.getplugin("terminalreporter")

    def report(line: str) -> None:
        text = f"[engines] {line}"
        with capture.global_and_fixture_disabled() if capture else nullcontext():
            if terminal is not None:
                terminal.write_line(text)
            else:
                print(text, file=sys.stderr, flush=True)

    return report


class EngineLauncher:
    """Starts the session's shared engines side by side on first use, and removes them at the end."""

    def __init__(self, wanted: frozenset[str], busybox: str, report: Callable[[str], None]) -> None:
        self.wanted = wanted
        self.busybox = busybox
        self.report = report
        self.image = ""
        self._image_error: EngineError | None = None
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=len(SHARED), thread_name_prefix="engine-launch")
        self._futures: dict[str, Future[tuple[_Running, float]]] = {}
        self._reported: set[str] = set()

    def ensure_image(self) -> str:
        """The engine image, built on first use; engines of runs that died are removed first.

        Raises:
            EngineError: the image could not be built.
        """
        with self._lock:
            # A build that failed fails every later test at once, rather than each after minutes of trying.
            if self._image_error is not None:
                raise self._image_error
            if not self.image:
                if removed := sweep():
                    self.report(f"removed {len(removed)} engine(s) left by test runs that died")
                try:
                    self.image = ensure_engine_image(self.report)
                except EngineError as exc:
                    self._image_error = exc
                    raise
            return self.image

    def _start(self, kind: str) -> tuple[_Running, float]:
        started = time.monotonic()
        made: _Running
        if kind == "swarm3":
            swarm = start_swarm(self.image)
            made = swarm
            loader: Callable[[], None] = partial(swarm.load_image, self.busybox)
        else:
            engine = start_engine(self.image, tls=kind == "tls_engine", ssh=kind == "ssh_engine")
            made = engine
            loader = partial(engine.load_image, self.busybox)
        try:
            loader()
        except BaseException:
            made.remove()
            raise
        return made, time.monotonic() - started

    def engine(self, kind: Literal["tls_engine", "ssh_engine"]) -> Engine:
        """The shared engine ``kind``, started with every other one this session wants.

        Raises:
            EngineError: it could not be started (every test that needs it gets the same error).
        """
        made = self._get(kind)
        assert isinstance(made, Engine)
        return made

    def swarm(self) -> Swarm:
        """The shared three-node swarm, started with every other engine this session wants.

        Raises:
            EngineError: it could not be started (every test that needs it gets the same error).
        """
        made = self._get("swarm3")
        assert isinstance(made, Swarm)
        return made

    def _get(self, kind: str) -> _Running:
        image = self.ensure_image()
        with self._lock:
            starting = sorted((self.wanted | {kind}) - self._futures.keys())
            for name in starting:
                self._futures[name] = self._pool.submit(self._start, name)
        if starting:
            self.report(f"starting {', '.join(starting)} side by side from {image}")
        made, seconds = self._futures[kind].result()
        if kind not in self._reported:
            self._reported.add(kind)
            self.report(f"{kind} ready {seconds:.1f} s after its start: {made!r}")
        return made

    def close(self) -> None:
        """Remove everything started, waiting for starts still under way.

        Raises:
            EngineError: something could not be removed (everything else still was).
        """
        errors: list[BaseException] = []
        for future in self._futures.values():
            if future.exception() is not None:
                continue  # a failed start removed what it had made
            made, _ = future.result()
            try:
                made.remove()
            except EngineError as exc:
                errors.append(exc)
        self._pool.shutdown()
        if errors:
            raise errors[0]


@pytest.fixture(scope="session")
def engine_launcher(request: pytest.FixtureRequest, busybox_image: str) -> Iterator[EngineLauncher]:
    launcher = EngineLauncher(request.config.stash.get(_WANTED, frozenset()), busybox_image, _reporter(request.config))
    yield launcher
    launcher.close()


@pytest.fixture(scope="session")
def engine_image(engine_launcher: EngineLauncher) -> str:
    """The engine image's tag, for :func:`tests.engines.start_engine` (built on first use)."""
    return engine_launcher.ensure_image()


@pytest.fixture
def tls_engine(engine_launcher: EngineLauncher) -> Iterator[Engine]:
    """The session's TLS engine: ``tls_engine.docker_env()`` for any Docker client; busybox loaded."""
    engine = engine_launcher.engine("tls_engine")
    yield engine
    if engine.paused:
        engine.unpause()


@pytest.fixture
def ssh_engine(engine_launcher: EngineLauncher) -> Iterator[Engine]:
    """The session's SSH engine: ``ssh_engine.docker_env()`` is ``DOCKER_HOST=ssh://root@IP``; busybox loaded."""
    engine = engine_launcher.engine("ssh_engine")
    yield engine
    if engine.paused:
        engine.unpause()


@pytest.fixture
def swarm3(engine_launcher: EngineLauncher) -> Iterator[Swarm]:
    """The session's three-node swarm (manager over TLS, two workers); busybox loaded on every node."""
    swarm = engine_launcher.swarm()
    yield swarm
    for engine in swarm.engines:
        if engine.paused:
            engine.unpause()
    if undone := swarm.reset():
        logger.info("put the swarm back after the test: %s", "; ".join(undone))


class EngineFactory:
    """Fresh engines and swarms for one test; all removed after it (on failure too)."""

    def __init__(self, image: str, busybox: str) -> None:
        self.image = image
        self.busybox = busybox
        self.made: list[_Running] = []
        self.networks: list[str] = []

    def network(self) -> str:
        """A new Docker network on this machine (a random name), removed after the engines on it."""
        name = f"compose-agent-engines-{secrets.token_hex(4)}"
        labels = {ENGINE_LABEL: name, **owner_labels()}
        run(["docker", "network", "create", *(f"--label={key}={value}" for key, value in labels.items()), name])
        self.networks.append(name)
        return name

    def start(
        self, *, tls: bool = False, ssh: bool = False, network: str | None = None, busybox: bool = False
    ) -> Engine:
        """A new engine (see :func:`tests.engines.start_engine`), with the busybox test image if asked."""
        engine = start_engine(self.image, tls=tls, ssh=ssh, network=network)
        self.made.append(engine)
        if busybox:
            engine.load_image(self.busybox)
        return engine

    def start_many(self, count: int, *, tls: bool = False, ssh: bool = False) -> list[Engine]:
        """``count`` new engines, started side by side."""
        engines = in_parallel([partial(start_engine, self.image, tls=tls, ssh=ssh)] * count)
        self.made.extend(engines)
        return engines

    def swarm(self, *, workers: int = 2, network: str | None = None, busybox: bool = False) -> Swarm:
        """A new swarm of ``1 + workers`` nodes (see :func:`tests.engines.start_swarm`)."""
        swarm = start_swarm(self.image, workers=workers, network=network)
        self.made.append(swarm)
        if busybox:
            swarm.load_image(self.busybox)
        return swarm

    def cleanup(self) -> None:
        """Remove every engine and swarm made, then the networks.

        Raises:
            EngineError: something could not be removed (everything else still was).
        """
        errors: list[EngineError] = []
        for thing in reversed(self.made):
            try:
                thing.remove()
            except EngineError as exc:
                errors.append(exc)
        for network in self.networks:
            proc = run(["docker", "network", "rm", network], check=False)
            if proc.returncode != 0:
                errors.append(EngineError(f"docker network rm {network}: {proc.stderr.strip()}"))
        if errors:
            raise errors[0]


@pytest.fixture
def engine_factory(engine_image: str, busybox_image: str) -> Iterator[EngineFactory]:
    factory = EngineFactory(engine_image, busybox_image)
    yield factory
    factory.cleanup()

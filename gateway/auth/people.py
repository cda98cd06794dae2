"""People: a name, a password (as a slow salted hash) and grants (scopes). Who logs in, and what they may do.

They are kept in one document (:mod:`gateway.auth.documents`): ``<state dir>/people.json``, or the
secret ``secret/{prefix}/{deployment_hash}/people`` when Vault is configured. The operator edits
them with ``compose-agent users`` (:class:`PeopleAdmin`); a running gateway or panel holds a
:class:`People` directory that re-reads the document when it changes, so an added, changed or
removed person counts everywhere within :data:`WATCH_INTERVAL` seconds, without a restart.

The document::

    {"version": 1, "people": {"alice": {"password": "scrypt$...", "grants": ["compose:read"],
                                        "created": "2026-12-01T10:00:00Z"}}}

Passwords never leave :mod:`gateway.auth.passwords`: not in logs, not in errors, not in ``repr``.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from ..errors import ConfigError, GatewayError, InvalidInput
from .documents import Document, FileDocument, Snapshot, VaultDocument
from .passwords import CONCURRENT_CHECKS, check_new_password, hash_password, verify_password_async
from .scopes import Scope, ScopeError, ScopeSet, parse_scope
from .tokens import PANEL_SHARE_DIR, TokenSettings, write_private_json
from .vault import VaultClient

__all__ = [
    "PEOPLE_FILE",
    "WATCH_INTERVAL",
    "People",
    "PeopleAdmin",
    "Person",
    "check_person_name",
    "open_people",
    "people_document",
    "share_people",
]

logger = logging.getLogger(__name__)

PEOPLE_FILE = "people.json"
PEOPLE_KEY = "people"
FORMAT_VERSION = 1
# How often a running process looks for changes: a removal counts everywhere within this (and a Vault read).
WATCH_INTERVAL = 1.0
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._@-]{0,63}$")
_MAX_GRANTS = 200


def check_person_name(name: str) -> str:
    """``name`` if it can name a person, else :class:`InvalidInput` saying what a name is."""
    if not _NAME_RE.fullmatch(name):
        shown = name[:64] if name.isprintable() else repr(name[:64])
        raise InvalidInput(
            f"{shown!r} is not a person's name: use 1 to 64 lowercase letters, digits and '.', '_', '-', '@', "
            "starting with a letter or digit (e.g. alice or alice@example.com)"
        )
    return name


@dataclass(frozen=True)
class Person:
    """Someone who may log in. ``grants`` are kept as given; :attr:`scopes` is what they add up to."""

    name: str
    password_hash: str = field(repr=False)
    grants: tuple[Scope, ...] = ()
    created: str = ""

    @property
    def scopes(self) -> ScopeSet:
        return ScopeSet(self.grants)

    def fingerprint(self) -> str:
        """Changes when the password changes: a login session bound to it ends then (never the hash itself)."""
        return hashlib.sha256(f"{self.name}\0{self.password_hash}".encode()).hexdigest()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def parse_people(data: Mapping[str, Any] | None, where: str) -> dict[str, Person]:
    """The people of a document; an absent one has none.

    Raises:
        ConfigError: the document is malformed, naming where and what.
    """
    if data is None:
        return {}
    if data.get("version") != FORMAT_VERSION or not isinstance(data.get("people"), dict):
        raise ConfigError(f"{where} is not a people document of version {FORMAT_VERSION}")
    people: dict[str, Person] = {}
    for name, entry in data["people"].items():
        try:
            check_person_name(name)
            if not isinstance(entry, dict) or not isinstance(entry.get("password"), str):
                raise ValueError("it has no password")
            grants = entry.get("grants", [])
            if not isinstance(grants, list) or not all(isinstance(g, str) for g in grants):
                raise ValueError("its grants are not a list of scopes")
            scopes = tuple(parse_scope(g) for g in grants)
        except (GatewayError, ValueError) as exc:
            raise ConfigError(f"{where}: the person {str(name)[:64]!r} is malformed: {exc}") from None
        people[name] = Person(name, entry["password"], scopes, str(entry.get("created", "")))
    return people


def dump_people(people: Mapping[str, Person]) -> dict[str, Any]:
    return {
        "version": FORMAT_VERSION,
        "people": {
            p.name: {"password": p.password_hash, "grants": [str(g) for g in p.grants], "created": p.created}
            for p in sorted(people.values(), key=lambda p: p.name)
        },
    }


def people_document(settings: TokenSettings, *, client: VaultClient | None = None) -> Document:
    """Where the people are: Vault when it is configured (``DEPLOYMENT_HASH`` then required), else the state dir.

    Raises:
        ConfigError: Vault is configured without ``DEPLOYMENT_HASH``.
    """
    if settings.vault_address:
        if not settings.deployment_hash:
            raise ConfigError(
                f"VAULT_ADDRESS is set ({settings.vault_address}) but DEPLOYMENT_HASH is not;"
                " it names the folder of this deployment's people in Vault"
            )
        return VaultDocument(client or VaultClient.from_settings(settings), settings.deployment_hash, PEOPLE_KEY)
    return FileDocument(settings.state_dir / PEOPLE_FILE)


def share_people(state_dir: Path, data: dict[str, Any] | None) -> Path:
    """Copy the people document into ``<state_dir>/panel/`` for a panel that sees only that folder (0600).

    No people: the copy is removed, so a removed person is not left behind for the panel.
    """
    path = Path(state_dir) / PANEL_SHARE_DIR / PEOPLE_FILE
    if not data or not data.get("people"):
        path.unlink(missing_ok=True)
        return path
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_private_json(path, data, replace=True)
    return path


class PeopleAdmin:
    """The operator's changes (``compose-agent users``): each one read, changed and written as a whole.

    Every method raises :class:`InvalidInput` for a bad name, scope or password, or a person that is
    missing (or already there), and ``ConfigError``/``VaultError`` when the document cannot be used.
    """

    def __init__(self, document: Document) -> None:
        self.document = document

    async def list(self) -> list[Person]:
        snapshot = await self.document.read()
        return sorted(parse_people(snapshot.data, self.document.description).values(), key=lambda p: p.name)

    async def _change(self, edit: Callable[[dict[str, Person]], None]) -> None:
        def change(data: dict[str, Any] | None) -> dict[str, Any]:
            people = parse_people(data, self.document.description)
            edit(people)
            return dump_people(people)

        await self.document.update(change)

    async def add(self, name: str, password: str, grants: Iterable[str]) -> Person:
        check_person_name(name)
        scopes = _parse_grants(grants)
        password_hash = hash_password(_checked_password(password))
        person = Person(name, password_hash, scopes, _now())

        def edit(people: dict[str, Person]) -> None:
            if name in people:
                raise InvalidInput(f"there is already a person named {name!r}; use `users grant` or `users passwd`")
            people[name] = person

        await self._change(edit)
        return person

    async def set_password(self, name: str, password: str) -> None:
        password_hash = hash_password(_checked_password(password))

        def edit(people: dict[str, Person]) -> None:
            person = _existing(people, name)
            people[name] = Person(name, password_hash, person.grants, person.created)

        await self._change(edit)

    async def grant(self, name: str, scope: str) -> bool:
        """Add ``scope`` to ``name``'s grants; False when it was granted already."""
        wanted = _parse_grants([scope])[0]
        added = []

        def edit(people: dict[str, Person]) -> None:
            person = _existing(people, name)
            if wanted not in person.grants:
                if len(person.grants) >= _MAX_GRANTS:
                    raise InvalidInput(f"{name!r} has {_MAX_GRANTS} grants, the most allowed; revoke some first")
                people[name] = Person(name, person.password_hash, (*person.grants, wanted), person.created)
                added.append(wanted)

        await self._change(edit)
        return bool(added)

    async def revoke(self, name: str, scope: str) -> None:
        unwanted = _parse_grants([scope])[0]

        def edit(people: dict[str, Person]) -> None:
            person = _existing(people, name)
            if unwanted not in person.grants:
                held = ", ".join(str(g) for g in person.grants) or "none"
                raise InvalidInput(f"{name!r} does not hold {unwanted} (grants: {held})")
            people[name] = Person(
                name, person.password_hash, tuple(g for g in person.grants if g != unwanted), person.created
            )

        await self._change(edit)

    async def remove(self, name: str) -> None:
        def edit(people: dict[str, Person]) -> None:
            _existing(people, name)
            del people[name]

        await self._change(edit)


def _checked_password(password: str) -> str:
    try:
        return check_new_password(password)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None


def _parse_grants(grants: Iterable[str]) -> tuple[Scope, ...]:
    try:
        scopes = tuple(dict.fromkeys(parse_scope(g) for g in grants))
    except ScopeError as exc:
        raise InvalidInput(str(exc)) from None
    if len(scopes) > _MAX_GRANTS:
        raise InvalidInput(f"at most {_MAX_GRANTS} grants per person")
    return scopes


def _existing(people: Mapping[str, Person], name: str) -> Person:
    check_person_name(name)
    if name not in people:
        known = ", ".join(sorted(people)[:20]) or "none yet (add one with `users add`)"
        raise InvalidInput(f"there is no person named {name!r}; people: {known}")
    return people[name]


class People:
    """The people as a running gateway (or panel) sees them: re-read whenever the document changes.

    Until :meth:`load` succeeds there is no one. A document that becomes unreadable (a bad edit, Vault
    down) keeps the last good people in force and logs a WARNING, like the token refresh does.
    """

    def __init__(self, document: Document, *, interval: float = WATCH_INTERVAL) -> None:
        self.document = document
        self.interval = interval
        self._people: dict[str, Person] = {}
        self._snapshot: Snapshot | None = None
        self._listeners: list[Callable[[dict[str, Any] | None], None]] = []
        self._limiter: anyio.CapacityLimiter | None = None
        # Checked against when the name is unknown, so the time taken does not say whether it is.
        self._dummy_hash: str | None = None

    def on_change(self, listener: Callable[[dict[str, Any] | None], None]) -> None:
        """Call ``listener(document data)`` after every load that changed the people."""
        self._listeners.append(listener)

    def __len__(self) -> int:
        return len(self._people)

    def get(self, name: str) -> Person | None:
        return self._people.get(name)

    def scopes_of(self, name: str) -> ScopeSet | None:
        """What ``name`` holds now; None when there is no such person (any more)."""
        person = self._people.get(name)
        return None if person is None else person.scopes

    async def load(self) -> bool:
        """Read the document if it changed; True when the people changed.

        Raises:
            ConfigError, VaultError: the document cannot be read or is malformed.
        """
        if self._snapshot is not None and not await self.document.changed(self._snapshot):
            return False
        snapshot = await self.document.read()
        people = parse_people(snapshot.data, self.document.description)
        first = self._snapshot is None
        self._snapshot = snapshot
        if people == self._people and not first:
            return False
        removed = sorted(set(self._people) - set(people))
        self._people = people
        if removed:
            logger.info("removed from %s: %s; their logins and tokens end now", self.document.description, removed)
        for listener in self._listeners:
            listener(snapshot.data)
        return True

    async def watch_forever(self) -> None:
        """Follow the document every :attr:`interval` seconds until cancelled; never raises."""
        failing = False
        while True:
            await anyio.sleep(self.interval)
            try:
                await self.load()
            except Exception as exc:  # noqa: BLE001 - a bad edit must not take the server down
                if not failing:
                    logger.warning(
                        "cannot read the people from %s, keeping the last good ones: %s",
                        self.document.description,
                        exc if isinstance(exc, GatewayError) else type(exc).__name__,
                    )
                failing = True
                continue
            if failing:
                logger.info("the people in %s can be read again", self.document.description)
                failing = False

    async def authenticate(self, name: str, password: str) -> Person | None:
        """The person ``name`` if ``password`` is theirs; None otherwise, taking as long either way.

        ``name`` is compared in lowercase (a phone's keyboard capitalises the first letter). The
        document is looked at first (a ``stat`` for a file), so someone added a moment ago can log in.
        """
        try:
            await self.load()
        except GatewayError:
            pass  # the watcher says so; the last good people stay in force
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(CONCURRENT_CHECKS)
        if self._dummy_hash is None:
            self._dummy_hash = await anyio.to_thread.run_sync(hash_password, "not anyone's, only here to take as long")
        person = self._people.get(name.strip().lower()) if len(name) <= 64 else None
        encoded = person.password_hash if person is not None else self._dummy_hash
        matches = await verify_password_async(password, encoded, self._limiter)
        if person is None or not matches:
            return None
        # Removed while the hash was being checked: no login.
        return self._people.get(person.name)


async def open_people(settings: TokenSettings, *, share: bool = False) -> People:
    """The people a server process follows: loaded now (a failure is logged, and retried by watching).

    With ``share`` and no Vault, every change is also copied to ``<state dir>/panel/people.json``
    for a status panel that sees only that folder (the deployment mounts just it).
    """
    document = people_document(settings)
    people = People(document)
    if share and isinstance(document, FileDocument):

        def share_with_panel(data: dict[str, Any] | None) -> None:
            share_people(settings.state_dir, data)

        people.on_change(share_with_panel)
    try:
        await people.load()
    except GatewayError as exc:
        logger.warning("no one can log in until the people in %s can be read: %s", document.description, exc)
    else:
        logger.info("%d person(s) may log in, from %s", len(people), document.description)
    return people

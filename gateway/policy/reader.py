"""One strict reading of a stack's files, before Compose sees them.

``docker compose config`` merges ``include`` and ``extends`` in and reads ``env_file``/``label_file``
into the model, so its output no longer says which files it read; and it reads them while loading,
so they must be judged before Compose runs at all. :func:`read_stack` reads every compose file of a
stack with :mod:`gateway.policy.strict_yaml` (so the guard and Compose cannot read one text two
ways), follows ``include`` and ``extends`` into files inside the folder, and records every file
reference Compose would follow, resolved as compose-go resolves it:

- ``include`` (short or long form: ``path``, ``env_file``, ``project_directory``), and the
  included project's own ``.env``;
- ``extends.file`` (relative to the file that names it), and the extended file's references;
- ``env_file`` (string, list, or long form with ``path``/``required``) and ``label_file``;
- ``secrets.*.file`` and ``configs.*.file``;
- the compose files themselves and the project's ``.env``.

A file is read only when it resolves inside the stack folder, is a regular file, and the file
actually opened (checked on its descriptor) is still inside: a reference outside is recorded and
never opened. Every file read is hashed, so a verdict or a confirmation can be bound to exactly the
bytes that were judged. Blocking: run it in a worker thread.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..folders import open_regular
from .profiles import compose_profiles
from .reading import FileReference, ReadFile, Reading, ReadRefused, Unloadable
from .strict_yaml import (
    CONTROL_CHARACTERS,
    Budget,
    Tagged,
    TaggedMapping,
    TaggedSequence,
    YamlRefused,
    load_documents,
)

__all__ = ["Budget", "FileReference", "ReadFile", "Reading", "ReadRefused", "Unloadable", "read_stack"]

# What Compose's remote loaders (git, OCI) would take instead of a local file: never followed.
_REMOTE = re.compile(r"://|^[^/]*@|^github\.com/|\.git(?:$|[#/])|#|^[A-Za-z]:")
_DOTENV_NAME = re.compile(r"^[ \t]*(?:export[ \t]+)?([A-Za-z_][A-Za-z0-9_.-]*)[ \t]*[=:]", re.MULTILINE)


@dataclass
class _State:
    root: Path
    budget: Budget
    sources: Mapping[Path, bytes]
    files: dict[Path, ReadFile] = field(default_factory=dict)
    absent: list[Path] = field(default_factory=list)
    refs: list[FileReference] = field(default_factory=list)
    dotenv_names: list[str] = field(default_factory=list)
    secret_names: list[str] = field(default_factory=list)
    documents: dict[Path, list[Any]] = field(default_factory=dict)
    scanned: set[Path] = field(default_factory=set)
    extended: set[tuple[Path, str]] = field(default_factory=set)
    nodes: int = 0
    bytes: int = 0


def read_stack(
    folder: Path,
    compose_files: Sequence[Path],
    *,
    project_directory: Path | None = None,
    env_file: Path | None = None,
    sources: Mapping[Path, bytes] | None = None,
    budget: Budget | None = None,
) -> Reading:
    """Read a stack's compose files strictly and collect every file they make Compose read.

    ``compose_files`` are the files Compose is given (``--file``), merged in order; the gateway
    passes one, so Compose never looks for ``compose.override.yaml``. Relative references resolve
    in ``project_directory`` (the stack folder by default). ``env_file`` replaces the project's
    ``.env``. ``sources`` maps a path to the bytes to read there instead of the disk's (a file
    ``deploy`` has not written yet), read as if it sat at that path.

    Raises:
        ReadRefused: a construct the guard does not read (tags, directives, duplicate keys...), a
            budget exceeded, a control character, or a file that cannot be read safely.
        Unloadable: a compose file inside the folder that is not valid YAML, or is missing.
    """
    state = _State(_root(folder), budget or Budget(), dict(sources or {}))
    base = Path(os.path.normpath(project_directory or folder))
    dotenv = env_file or base / ".env"
    state.refs.append(FileReference(".env file", None, dotenv.name, (dotenv,)))
    text = _read(state, dotenv, ".env file", optional=True)
    profiles: tuple[str, ...] = ()
    if text is not None:
        state.dotenv_names += _DOTENV_NAME.findall(text)
        profiles = compose_profiles(text)
    for compose_file in compose_files:
        state.refs.append(FileReference("compose file", None, compose_file.name, (compose_file,)))
        _compose_file(state, compose_file, base, "compose file")
    return Reading(
        folder=state.root,
        compose_files=tuple(compose_files),
        files=tuple(state.files.values()),
        absent=tuple(dict.fromkeys(state.absent)),
        references=tuple(dict.fromkeys(state.refs)),
        dotenv_names=tuple(dict.fromkeys(state.dotenv_names)),
        nodes=state.nodes,
        profiles=profiles,
        secret_names=tuple(dict.fromkeys(state.secret_names)),
    )


def _root(folder: Path) -> Path:
    """Where the folder is, its own name not followed: a stack folder that is a link is refused, and
    one swapped for a link meanwhile leaves every file it holds outside this root (never opened)."""
    if os.path.islink(folder):
        raise ReadRefused(
            "unreadable_file", f"the stack folder {folder.name} is a symbolic link; the guard follows no link out of it"
        )
    return Path(os.path.realpath(folder.parent)) / folder.name


def _realpath(path: Path) -> str:
    """Where ``path`` resolves; a link swapped for a file mid-resolution is refused, not an internal error."""
    try:
        return os.path.realpath(path)
    except OSError:
        raise ReadRefused("unreadable_file", f"{path.name} changed while the guard read it; try again") from None


def _inside(path: Path | str, root: Path) -> bool:
    text, top = str(path), str(root)
    return text == top or text.startswith(top.rstrip("/") + "/")


def _shown(state: _State, path: Path) -> str:
    try:
        return os.path.relpath(path, state.root)
    except ValueError:
        return str(path)


def _read(state: _State, path: Path, kind: str, *, optional: bool = False) -> str | None:
    """The text of ``path`` if it is a regular file inside the folder; None if absent and ``optional``.

    Outside the folder, nothing is opened and None is returned: the reference is judged instead.
    """
    shown = _shown(state, path)
    if path in state.sources:
        data = state.sources[path]
        signature = (0, len(data), 0, 0)
    else:
        real = _realpath(path)
        if not _inside(real, state.root):
            return None
        try:
            # A regular file with one name, or nothing opened: no FIFO, no device, no hard link.
            fd = open_regular(real)
        except FileNotFoundError:
            if optional:
                state.absent.append(path)
                return None
            raise Unloadable("missing_file", f"{kind} {shown} does not exist (read before Compose runs)") from None
        except OSError as exc:
            raise ReadRefused("unreadable_file", f"the policy guard cannot read {shown}: {exc.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ReadRefused("unreadable_file", f"{kind} {shown} is not a regular file")
            _spend_bytes(state, shown, st.st_size)
            # What was opened, not what was asked for: a folder swapped for a symlink meanwhile shows here.
            opened = _opened(fd, real)
            if not _inside(opened, state.root):
                raise ReadRefused("unreadable_file", f"{kind} {shown} moved outside the stack folder while read")
            data = _read_all(fd, state.budget.file_bytes)
        finally:
            os.close(fd)
        signature = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if len(data) > state.budget.file_bytes:
        raise ReadRefused("yaml_budget", f"{shown} is over {state.budget.file_bytes} bytes")
    if path not in state.files:
        if len(state.files) >= state.budget.files:
            raise ReadRefused("yaml_budget", f"the stack's files pull in more than {state.budget.files} files")
        state.files[path] = ReadFile(path, kind, hashlib.sha256(data).hexdigest(), signature)
    if b"\0" in data:
        raise ReadRefused("control_characters", f"{shown} holds a NUL byte")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ReadRefused("unreadable_file", f"{shown} is not UTF-8 text") from None


def _spend_bytes(state: _State, shown: str, size: int) -> None:
    if size > state.budget.file_bytes:
        raise ReadRefused(
            "yaml_budget", f"{shown} is {size} bytes; the guard reads files up to {state.budget.file_bytes}"
        )
    state.bytes += size
    if state.bytes > state.budget.total_bytes:
        raise ReadRefused("yaml_budget", f"the stack's files are over {state.budget.total_bytes} bytes in all")


def _opened(fd: int, asked: str) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:  # no /proc (not Linux): the realpath checked just before stands
        return asked


def _read_all(fd: int, limit: int) -> bytes:
    chunks, total = [], 0
    while total <= limit:
        chunk = os.read(fd, min(65536, limit + 1 - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def _parse(state: _State, path: Path, kind: str) -> list[Any] | None:
    """The documents of one compose file, parsed once; None when it is outside the folder (never opened)."""
    real = Path(_realpath(path)) if path not in state.sources else path
    if real in state.documents:
        return state.documents[real]
    text = _read(state, path, kind)
    if text is None:
        return None
    shown = _shown(state, path)
    try:
        documents, state.nodes = load_documents(text, state.budget, state.nodes)
    except YamlRefused as exc:
        if exc.code == "invalid_yaml":
            raise Unloadable("invalid_yaml", f"{shown} is not valid YAML (read before Compose runs): {exc}") from None
        raise ReadRefused(exc.code, f"{shown}: {exc}") from None
    state.documents[real] = documents
    return documents


def _compose_file(state: _State, path: Path, base: Path, kind: str) -> None:
    """A whole compose file (given to Compose, or included): every reference in it, resolved in ``base``."""
    documents = _parse(state, path, kind)
    real = Path(_realpath(path)) if path not in state.sources else path
    if documents is None or real in state.scanned:
        return
    state.scanned.add(real)
    for document in documents:
        if isinstance(document, dict):
            _scan(state, document, base)


def _extended(state: _State, path: Path, service: str) -> None:
    """One service of an extended file, as Compose takes it: that service alone, and what it extends in turn.

    Its references resolve in the extended file's own folder; of the file Compose reads nothing else
    (not its include, secrets or other services).
    """
    key = (Path(_realpath(path)), service)
    if key in state.extended:
        return  # a cycle, which Compose refuses itself
    state.extended.add(key)
    for document in _parse(state, path, "extends file") or []:
        services = document.get("services") if isinstance(document, dict) else None
        spec = services.get(service) if isinstance(services, dict) else None
        if isinstance(spec, dict):
            _service(state, service, spec, path.parent, here=path)


def _plain(value: Any, what: str) -> Any:
    """``value`` of a key that names files, refused if it carries a tag (go-yaml would read it its own way)."""
    if isinstance(value, (Tagged, TaggedMapping, TaggedSequence)):
        raise ReadRefused("yaml_tag", f"{what} carries the tag {value.tag}; keys that name files carry no tags")
    return value


def _reference(state: _State, kind: str, service: str | None, value: Any, base: Path) -> FileReference:
    """A reference as compose-go resolves it: joined to ``base`` and cleaned lexically."""
    where = f"{kind} of service '{service}'" if service else kind
    value = _plain(value, where)
    if type(value) is not str:
        raise ReadRefused(
            "invalid_reference", f"{where} {str(value)[:80]!r} is not a string (go-yaml reads a number, bool or null)"
        )
    if CONTROL_CHARACTERS.search(value):
        raise ReadRefused("control_characters", f"{where} {value[:80]!r} holds a control character")
    if "$" in value:
        return FileReference(kind, service, value, (), "uses a variable, so it cannot be checked; write it literally")
    if value.startswith("~"):
        return FileReference(kind, service, value, (), "starts with ~; write it relative to the stack folder")
    if _REMOTE.search(value):
        return FileReference(
            kind, service, value, (), "is a remote reference (URL, git or OCI); use a file in the folder"
        )
    if not value:
        return FileReference(kind, service, value, (), "is empty")
    return FileReference(kind, service, value, (Path(os.path.normpath(base / value)),))


def _as_list(value: Any, what: str) -> list[Any]:
    value = _plain(value, what)
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _scan(state: _State, doc: dict[str, Any], base: Path) -> None:
    """Record one document's references (``base``: its model's working dir) and follow include and extends."""
    services = doc.get("services")
    if isinstance(services, dict):
        for name, spec in services.items():
            if isinstance(spec, dict):
                _service(state, str(name), spec, base)
    for entry in _as_list(doc.get("include"), "include"):
        _include(state, _plain(entry, "include"), base)
    # The names a stack's secrets go by (gateway.secretrefs): Compose is told a placeholder for each.
    extension = doc.get("x-compose-agent")
    declared = extension.get("secrets") if isinstance(extension, dict) else None
    if isinstance(declared, dict):
        state.secret_names += [name if isinstance(name, str) else repr(name) for name in declared]
    for kind in ("secrets", "configs"):
        section = doc.get(kind)
        if isinstance(section, dict):
            for spec in section.values():
                if isinstance(spec, dict) and "file" in spec:
                    state.refs.append(_reference(state, f"{kind[:-1]} file", None, spec["file"], base))


def _service(state: _State, service: str, spec: dict[str, Any], base: Path, *, here: Path | None = None) -> None:
    """A service's references; ``here`` is the extended file it comes from (its same-file extends are followed)."""
    for entry in _as_list(spec.get("env_file"), "env_file"):
        entry = _plain(entry, "env_file")
        value = entry.get("path") if isinstance(entry, dict) else entry
        ref = _reference(state, "env_file", service, value, base)
        state.refs.append(ref)
        for path in ref.paths:
            _read(state, path, "env_file", optional=True)
    for value in _as_list(spec.get("label_file"), "label_file"):
        ref = _reference(state, "label_file", service, value, base)
        state.refs.append(ref)
        for path in ref.paths:
            _read(state, path, "label_file", optional=True)
    extends = _plain(spec.get("extends"), "extends")
    target: Any
    file: Any
    if isinstance(extends, str):
        target, file = extends, None
    elif isinstance(extends, dict):
        target, file = extends.get("service"), extends.get("file")
    else:
        return
    if file is not None:
        ref = _reference(state, "extends file", service, file, base)
        state.refs.append(ref)
        for path in ref.paths:
            _extended(state, path, str(target))
    elif here is not None:
        _extended(state, here, str(target))


def _include(state: _State, entry: Any, base: Path) -> None:
    """One ``include`` entry: its files, env files and project directory, resolved in ``base``."""
    if isinstance(entry, dict):
        paths = _as_list(entry.get("path"), "include path")
        env_files = _as_list(entry.get("env_file"), "include env_file")
        project_dir = entry.get("project_directory")
    else:
        paths, env_files, project_dir = [entry], [], None
    refs = [_reference(state, "include", None, p, base) for p in paths]
    env_refs = [_reference(state, "include env_file", None, e, base) for e in env_files]
    project_ref = _reference(state, "include project_directory", None, project_dir, base) if project_dir else None
    state.refs += refs + env_refs + ([project_ref] if project_ref else [])
    for ref in env_refs:
        for path in ref.paths:
            _read(state, path, "include env_file")
    if not refs or not refs[0].paths or (project_ref is not None and not project_ref.paths):
        return
    # The included model's working dir: its project_directory, else the folder of its first file.
    included_base = project_ref.paths[0] if project_ref is not None else refs[0].paths[0].parent
    if not env_refs:
        dotenv = included_base / ".env"
        state.refs.append(FileReference(".env file", None, _shown(state, dotenv), (dotenv,)))
        _read(state, dotenv, ".env file", optional=True)
    for ref in refs:
        for path in ref.paths:
            _compose_file(state, path, included_base, "include")

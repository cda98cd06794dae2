"""The file references Compose resolves away before anyone can judge them.

``docker compose config`` prints a model in which ``include`` and ``extends`` are merged in and
``env_file``/``label_file`` are read into ``environment``/``labels``: the model no longer says
which files were read. Compose offers no flag to keep them (``--no-env-resolution`` does not keep
``env_file`` in v2.40), and it reads them while loading, so they must be judged *before* Compose
runs at all: a file outside the stack folder must never be opened, not even to report a YAML error
that would quote it.

So this module reads the raw keys that name files, and nothing else, with a YAML library (not a
hand-written parser) that keeps every scalar a string, the way Compose's YAML 1.2 loader sees
paths. It follows ``include`` and ``extends`` into files inside the folder, and never opens one
outside it. Everything else is judged on Compose's own model (:mod:`gateway.policy.rules`).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ComposeFailed, PolicyViolation

__all__ = ["FileReference", "References", "collect_references", "MAX_FILES", "MAX_FILE_BYTES"]

MAX_FILES = 64
MAX_FILE_BYTES = 2 * 1024 * 1024

# Keys that name files Compose reads while loading. A file whose text holds none of them (and no
# backslash, so no escaped spelling in a double-quoted key) names no such file: it is not parsed.
_FILE_KEYS = ("include", "extends", "env_file", "label_file")


@functools.cache
def _raw_loader() -> type[Any]:
    """A safe YAML loader with every scalar a string (``yes`` stays "yes", as in Compose's YAML 1.2)
    and merge keys kept. Built on first use: most stacks never need it, and PyYAML costs ~1 MB."""
    import yaml

    base: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    def untagged(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
        # Compose's own tags (!reset, !override) only change merging; read the value beneath.
        if isinstance(node, yaml.MappingNode):
            return loader.construct_mapping(node)
        if isinstance(node, yaml.SequenceNode):
            return loader.construct_sequence(node)
        return loader.construct_scalar(node)  # type: ignore[arg-type]

    class RawLoader(base):  # type: ignore[valid-type,misc]
        yaml_implicit_resolvers: dict[Any, Any] = {}

    RawLoader.add_implicit_resolver("tag:yaml.org,2002:merge", re.compile(r"^(?:<<)$"), ["<"])
    RawLoader.add_multi_constructor("!", untagged)
    return RawLoader


@dataclass(frozen=True)
class FileReference:
    """A file Compose reads on the host while loading the stack.

    ``paths`` are the absolute candidates it may resolve to (relative paths are tried against each
    folder Compose could take them from); empty when the value cannot be resolved here, and
    ``problem`` then says why.
    """

    kind: str
    service: str | None
    value: str
    paths: tuple[Path, ...]
    problem: str = ""


@dataclass
class References:
    """Every file reference found, and every file whose content shapes the model, existing or not
    (for a cache signature: the compose files read, and the env files they interpolate with)."""

    refs: list[FileReference] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _as_list(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    return value if isinstance(value, list) else [value]


def _reference(kind: str, service: str | None, value: str, bases: tuple[Path, ...]) -> FileReference:
    if "$" in value:
        return FileReference(kind, service, value, (), "uses a variable, so it cannot be checked; write it literally")
    if value.startswith("~"):
        return FileReference(kind, service, value, (), "starts with ~; write it relative to the stack folder")
    path = Path(value)
    if path.is_absolute():
        return FileReference(kind, service, value, (Path(os.path.normpath(path)),))
    candidates = tuple(dict.fromkeys(Path(os.path.normpath(base / path)) for base in bases))
    return FileReference(kind, service, value, candidates)


def _load(path: Path, shown: str) -> list[Any]:
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise PolicyViolation(f"{shown} is {size} bytes; the guard reads compose files up to {MAX_FILE_BYTES}")
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyViolation(f"the policy guard cannot read {shown}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise PolicyViolation(f"{shown} is not UTF-8 text") from exc
    if "\\" not in text and not any(key in text for key in _FILE_KEYS):
        return []
    import yaml

    try:
        return list(yaml.load_all(text, Loader=_raw_loader()))  # noqa: S506 - a safe loader subclass
    except yaml.YAMLError as exc:
        # The same kind as Compose's own load errors: the file does not load, whoever read it first.
        raise ComposeFailed(f"{shown} is not valid YAML (read before Compose runs): {exc}") from None


def _include_entries(doc: dict[str, Any]) -> Iterator[tuple[list[str], list[str], str | None]]:
    """(paths, env files, project directory) of each ``include`` entry, in its short or long form."""
    for entry in _as_list(doc.get("include")):
        if isinstance(entry, str):
            yield [entry], [], None
        elif isinstance(entry, dict):
            paths = [p for p in _as_list(entry.get("path")) if isinstance(p, str)]
            env_files = [p for p in _as_list(entry.get("env_file")) if isinstance(p, str)]
            project_dir = entry.get("project_directory")
            yield paths, env_files, project_dir if isinstance(project_dir, str) and project_dir else None


def _env_files(value: Any) -> Iterator[str]:
    for entry in _as_list(value):
        if isinstance(entry, str):
            yield entry
        elif isinstance(entry, dict) and isinstance(entry.get("path"), str):
            yield entry["path"]


def collect_references(compose_file: Path, folder: Path, *, source: Path | None = None) -> References:
    """The file references of a stack: its compose file, ``.env``, and what ``include``/``extends`` pull in.

    Follows ``include`` and ``extends`` into files inside ``folder`` (at most :data:`MAX_FILES`);
    a reference outside it is recorded, never opened. Blocking: run it in a worker thread.

    ``source`` holds the text of ``compose_file`` when that file is not on disk yet (a compose file
    ``deploy`` is judging before it writes it): it is read from there, as if it sat at ``compose_file``.

    Raises:
        ComposeFailed: a file inside the folder that is not valid YAML.
        PolicyViolation: a file that cannot be read, or too many files.
    """
    root = Path(os.path.realpath(folder))
    found = References()
    found.refs.append(FileReference("compose file", None, compose_file.name, (compose_file,)))
    dotenv = folder / ".env"
    # In the signature even when absent: creating one changes how the model interpolates.
    found.files.append(dotenv)
    if os.path.lexists(dotenv):
        found.refs.append(FileReference(".env file", None, ".env", (dotenv,)))
    # (file to read, the folder its relative references resolve against)
    queue: list[tuple[Path, Path]] = [(compose_file, folder)]
    seen: set[Path] = set()
    while queue:
        path, base = queue.pop(0)
        candidate = source is not None and path == compose_file
        # A candidate replaces whatever sits at its place (a symlink too): it is the file in the folder.
        real = root / compose_file.name if candidate else Path(os.path.realpath(path))
        if real in seen or not _inside(real, root):
            continue  # outside files are judged from the recorded reference and never opened
        seen.add(real)
        if len(seen) > MAX_FILES:
            raise PolicyViolation(f"the stack's compose files pull in more than {MAX_FILES} files")
        found.files.append(path)
        bases = tuple(dict.fromkeys((base, path.parent)))
        for doc in _load(source if candidate and source is not None else real, os.path.relpath(path, folder)):
            if isinstance(doc, dict):
                queue += _scan(doc, bases, found)
    return found


def _scan(doc: dict[str, Any], bases: tuple[Path, ...], found: References) -> list[tuple[Path, Path]]:
    """Record one document's references; return the compose files it pulls in, to read next."""
    follow: list[tuple[Path, Path]] = []
    for paths, env_files, project_dir in _include_entries(doc):
        refs = [_reference("include", None, p, bases) for p in paths]
        refs += [_reference("include env_file", None, p, bases) for p in env_files]
        project_ref = _reference("include project_directory", None, project_dir, bases) if project_dir else None
        found.refs += refs + ([project_ref] if project_ref else [])
        for ref in refs:
            if ref.kind != "include":
                continue
            for candidate in ref.paths:
                # The included model resolves its own paths against its project directory (by default
                # the first included file's folder); both are tried, and each must stay inside.
                included_base = project_ref.paths[0] if project_ref and project_ref.paths else candidate.parent
                follow.append((candidate, included_base))
                dotenv = included_base / ".env"
                if not env_files:
                    # Without an env_file of its own, an include interpolates with its folder's .env.
                    found.files.append(dotenv)
                    if os.path.lexists(dotenv):
                        found.refs.append(FileReference(".env file", None, str(dotenv), (dotenv,)))
        for ref in refs:
            if ref.kind == "include env_file":
                found.files += ref.paths
    services = doc.get("services")
    if not isinstance(services, dict):
        return follow
    for name, spec in services.items():
        if not isinstance(spec, dict):
            continue
        service = str(name)
        extends = spec.get("extends")
        if isinstance(extends, dict) and isinstance(extends.get("file"), str):
            ref = _reference("extends file", service, extends["file"], bases)
            found.refs.append(ref)
            follow += [(candidate, candidate.parent) for candidate in ref.paths]
        for env_file in _env_files(spec.get("env_file")):
            found.refs.append(_reference("env_file", service, env_file, bases))
        for label_file in _as_list(spec.get("label_file")):
            if isinstance(label_file, str):
                found.refs.append(_reference("label_file", service, label_file, bases))
    return follow

"""The JSON schema of every key Compose accepts, read out of the Compose binary that actually runs.

compose-go embeds ``schema/compose-spec.json`` with ``go:embed``, which keeps the file verbatim in
the binary: so the allowlist's test follows whatever Compose the gateway would run, and a Compose
upgrade that adds a key fails that test until the key is classified.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from gateway.compose.cli import ComposeCli

__all__ = ["compose_binary", "embedded_schema", "schema_paths"]

_MARKER = b'"$id": "compose_spec.json"'


def compose_binary() -> tuple[Path, str]:
    """The Compose plugin binary the gateway would run, and its version."""
    cli = ComposeCli.locate(None, os.environ)
    if len(cli.argv) == 1:
        return Path(cli.argv[0]), cli.version
    info = subprocess.run(
        [cli.argv[0], "info", "--format", "{{json .ClientInfo.Plugins}}"], capture_output=True, text=True, check=True
    )
    for plugin in json.loads(info.stdout) or []:
        if plugin.get("Name") == "compose":
            return Path(plugin["Path"]), cli.version
    raise AssertionError(f"{' '.join(cli.argv)} runs Compose, but docker info names no compose plugin binary")


def embedded_schema(binary: Path) -> dict[str, Any]:
    """The compose-spec JSON schema inside ``binary``.

    Raises:
        AssertionError: no schema in it (a Compose built some other way: vendor the schema then).
    """
    data = binary.read_bytes()
    marker = data.find(_MARKER)
    assert marker > 0, f"{binary} holds no compose-spec schema ({_MARKER.decode()} not found)"
    start = data.rfind(b"{", 0, marker)
    schema, _ = json.JSONDecoder().raw_decode(data[start : start + 1_000_000].decode("utf-8", "replace"))
    assert isinstance(schema, dict)
    return schema


def schema_paths(schema: Mapping[str, Any]) -> tuple[set[str], set[str]]:
    """Every key path the schema defines, in the allowlist's notation; and the paths of free mappings
    (objects whose keys the schema does not name, as ``storage_opt``)."""
    definitions = schema.get("definitions") or schema.get("$defs") or {}
    paths: set[str] = set()
    free: set[str] = set()

    def resolve(node: Mapping[str, Any], seen: tuple[str, ...]) -> Iterator[tuple[Mapping[str, Any], tuple[str, ...]]]:
        ref = node.get("$ref")
        if ref is not None:
            if ref in seen:
                return
            node, seen = definitions[ref.rsplit("/", 1)[-1]], (*seen, ref)
        yield node, seen
        for keyword in ("oneOf", "anyOf", "allOf"):
            for alternative in node.get(keyword, []):
                yield from resolve(alternative, seen)

    def walk(node: Mapping[str, Any], path: str, seen: tuple[str, ...]) -> None:
        for part, part_seen in resolve(node, seen):
            items = part.get("items")
            if isinstance(items, dict):
                walk(items, path, part_seen)
            named = False
            for key, child in (part.get("properties") or {}).items():
                named = True
                child_path = f"{path}.{key}" if path else key
                paths.add(child_path)
                walk(child, child_path, part_seen)
            for pattern, child in (part.get("patternProperties") or {}).items():
                named = True
                key = "x-*" if pattern.startswith("^x-") else "*"
                child_path = f"{path}.{key}" if path else key
                paths.add(child_path)
                if key == "*":
                    walk(child, child_path, part_seen)
            extra = part.get("additionalProperties")
            if isinstance(extra, dict):
                child_path = f"{path}.*" if path else "*"
                paths.add(child_path)
                walk(extra, child_path, part_seen)
            elif part.get("type") == "object" and not named and extra is not False:
                free.add(path)

    walk(schema, "", ())
    return paths, free

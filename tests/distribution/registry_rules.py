"""What the MCP registry requires of a ``server.json`` (schema 2025-12-11), as checks a test can run offline.

The constraints below are restated from the registry's own sources, read at
modelcontextprotocol/registry commit e361b5ff5a925b36a38eda0544bca8230a84558b:
``internal/validators/schemas/2025-12-11.json`` (the published schema: required fields, patterns,
lengths, enums), ``internal/validators/validators.go`` (the semantic checks run on publish: name parts,
version ranges, argument names) and ``internal/validators/registries/oci.go`` and ``pypi.go`` (what the
registry checks of an OCI image and a PyPI package). Only the parts that apply to a server with
``packages`` and no ``remotes`` are kept; a newer schema is a deliberate change of this file.
"""

from __future__ import annotations

import re
from typing import Any

from jsonschema import Draft7Validator

__all__ = ["SCHEMA_URL", "problems"]

SCHEMA_URL = "https://static.modelcontextprotocol.io/schemas/2025-12-11/server.schema.json"

_INPUT = {
    "type": "object",
    "properties": {
        "description": {"type": "string"},
        "isRequired": {"type": "boolean"},
        "format": {"enum": ["string", "number", "boolean", "filepath"]},
        "value": {"type": "string"},
        "isSecret": {"type": "boolean"},
        "default": {"type": "string"},
        "placeholder": {"type": "string"},
        "choices": {"type": "array", "items": {"type": "string"}},
        "variables": {"type": "object", "additionalProperties": {"type": "object"}},
    },
}
_ARGUMENT = {
    "anyOf": [
        {
            "allOf": [
                _INPUT,
                {
                    "required": ["type"],
                    "properties": {"type": {"enum": ["positional"]}, "valueHint": {"type": "string"}},
                    "anyOf": [{"required": ["valueHint"]}, {"required": ["value"]}],
                },
            ]
        },
        {
            "allOf": [
                _INPUT,
                {
                    "required": ["type", "name"],
                    "properties": {"type": {"enum": ["named"]}, "name": {"type": "string"}},
                },
            ]
        },
    ]
}
_KEY_VALUE = {"allOf": [_INPUT, {"required": ["name"], "properties": {"name": {"type": "string"}}}]}
SCHEMA: dict[str, Any] = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "required": ["name", "description", "version"],
    "properties": {
        "$schema": {"type": "string"},
        "name": {"type": "string", "minLength": 3, "maxLength": 200, "pattern": r"^[a-zA-Z0-9.-]+/[a-zA-Z0-9._-]+$"},
        "description": {"type": "string", "minLength": 1, "maxLength": 100},
        "title": {"type": "string", "minLength": 1, "maxLength": 100},
        "version": {"type": "string", "maxLength": 255},
        "repository": {
            "type": "object",
            "required": ["url", "source"],
            "properties": {"url": {"type": "string"}, "source": {"type": "string"}, "subfolder": {"type": "string"}},
        },
        "packages": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["registryType", "identifier", "transport"],
                "properties": {
                    "registryType": {"type": "string"},
                    "identifier": {"type": "string"},
                    "version": {"type": "string", "minLength": 1, "not": {"const": "latest"}},
                    "fileSha256": {"type": "string", "pattern": "^[a-f0-9]{64}$"},
                    "runtimeHint": {"type": "string"},
                    "transport": {
                        "type": "object",
                        "required": ["type"],
                        "properties": {"type": {"enum": ["stdio", "streamable-http", "sse"]}},
                    },
                    "runtimeArguments": {"type": "array", "items": _ARGUMENT},
                    "packageArguments": {"type": "array", "items": _ARGUMENT},
                    "environmentVariables": {"type": "array", "items": _KEY_VALUE},
                },
            },
        },
    },
}
_NAMESPACE = r"[a-zA-Z0-9][a-zA-Z0-9.-]*[a-zA-Z0-9]"
_NAME_PART = r"[a-zA-Z0-9][a-zA-Z0-9._-]*[a-zA-Z0-9]"
_SERVER_NAME = re.compile(rf"^{_NAMESPACE}/{_NAME_PART}$")
# A version range in any of the forms the registry refuses: ^1.2, ~1.2, >=1.0, 1.x, 1.*, 1 - 2, 1 || 2.
_RANGE = re.compile(r"^\s*(?:\^|~|>=|<=|>|<|=)|\s-\s|\|\||^\s*v?\d+(?:\.(?:\d+|x|X|\*))*\.(?:x|X|\*)")
_OCI_REGISTRIES = {"docker.io", "registry-1.docker.io", "index.docker.io", "ghcr.io"}
_OCI_REFERENCE = re.compile(r"^[a-z0-9._/:-]+?(?::[\w][\w.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$")
_TAG_OR_DIGEST = re.compile(
    r"/[^/:@]+(?::[\w][\w.-]{0,127}|@sha256:[a-f0-9]{64})$|:[\w][\w.-]{0,127}@sha256:[a-f0-9]{64}$"
)


def _registry(reference: str) -> str:
    """The registry an image reference names: its first part if that looks like a host, else Docker Hub."""
    first, _, rest = reference.partition("/")
    return first if rest and ("." in first or ":" in first or first == "localhost") else "docker.io"


def problems(server: dict[str, Any], readme: str) -> list[str]:
    """Every way ``server`` falls short of what the registry accepts; empty when it would be accepted."""
    found = [
        f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
        for e in Draft7Validator(SCHEMA).iter_errors(server)
    ]
    if found:
        return found
    if not _SERVER_NAME.match(server["name"]):
        found.append(f"name {server['name']!r}: namespace and name must start and end with a letter or digit")
    for where, version in [("version", server["version"])] + [
        (f"packages/{i}/version", p["version"]) for i, p in enumerate(server.get("packages", [])) if "version" in p
    ]:
        if version == "latest" or _RANGE.search(version):
            found.append(f"{where}: {version!r} is not one specific version")
    for i, package in enumerate(server.get("packages", [])):
        found += _package_problems(f"packages/{i}", package, server["name"], readme)
    return found


def _package_problems(where: str, package: dict[str, Any], name: str, readme: str) -> list[str]:
    found = []
    if any(c.isspace() for c in package["identifier"]):
        found.append(f"{where}/identifier has spaces")
    if package["transport"]["type"] == "stdio" and package["transport"].get("url"):
        found.append(f"{where}/transport: stdio takes no url")
    for kind in ("runtimeArguments", "packageArguments"):
        for j, argument in enumerate(package.get(kind, [])):
            if argument["type"] != "named":
                continue
            flag = argument["name"]
            if not flag or any(c in flag for c in "<> $"):
                found.append(f"{where}/{kind}/{j}: {flag!r} is not a bare flag name")
            for field in ("value", "default"):
                if argument.get(field, "").startswith(flag):
                    found.append(f"{where}/{kind}/{j}/{field} starts with the flag {flag!r}")
    if package["registryType"] == "oci":
        for field in ("version", "registryBaseUrl", "fileSha256"):
            if field in package:
                found.append(f"{where}: an OCI package carries no {field} (the tag belongs in identifier)")
        identifier = package["identifier"]
        registry = _registry(identifier)
        if not _OCI_REFERENCE.match(identifier) or not _TAG_OR_DIGEST.search("/" + identifier):
            found.append(f"{where}/identifier {identifier!r} is not an image reference with a tag or digest")
        elif registry not in _OCI_REGISTRIES and not registry.endswith(".pkg.dev"):
            found.append(f"{where}/identifier: the registry accepts images from Docker Hub, ghcr.io or *.pkg.dev")
    if package["registryType"] == "pypi" and f"mcp-name: {name}" not in readme:
        found.append(f"{where}: PyPI's description (the README) must contain 'mcp-name: {name}'")
    return found

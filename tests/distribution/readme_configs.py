"""The client configurations the README shows, read from it as a client would read them.

Each configuration in the README follows a ``<!-- client-config: NAME -->`` line: a JSON file
(``mcpServers`` for Claude Desktop and Cursor, ``servers`` for VS Code) or a ``claude mcp add`` line for
Claude Code. A test substitutes the README's placeholders (your home, your stacks folder, the token,
the socket's group, the published names) and runs exactly what is left.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = ["HttpTarget", "StdioLaunch", "readme_configs", "substitute"]

REPO = Path(__file__).resolve().parents[2]
_BLOCK = re.compile(r"<!-- client-config: ([a-z0-9-]+) -->\n```(json|sh)\n(.*?)\n```", re.S)
_SERVER = "compose-agent"


@dataclass(frozen=True)
class StdioLaunch:
    command: str
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class HttpTarget:
    url: str
    headers: dict[str, str] = field(default_factory=dict)


def substitute(value: Any, replacements: Mapping[str, str]) -> Any:
    """``value`` with every placeholder of ``replacements`` replaced: in a launch or target, strings, lists, dicts."""
    if isinstance(value, StdioLaunch | HttpTarget):
        return type(value)(**{f.name: substitute(getattr(value, f.name), replacements) for f in fields(value)})
    if isinstance(value, str):
        for placeholder, real in replacements.items():
            value = value.replace(placeholder, real)
        return value
    if isinstance(value, list):
        return [substitute(item, replacements) for item in value]
    if isinstance(value, dict):
        return {key: substitute(item, replacements) for key, item in value.items()}
    return value


def _from_json(text: str) -> StdioLaunch | HttpTarget:
    document = json.loads(text)
    servers = document.get("mcpServers", document.get("servers"))
    entry = servers[_SERVER]
    if "url" in entry:
        assert entry.get("type", "http") == "http", f"an HTTP entry of type {entry.get('type')!r}"
        return HttpTarget(entry["url"], dict(entry.get("headers", {})))
    assert entry.get("type", "stdio") == "stdio", f"a command entry of type {entry.get('type')!r}"
    return StdioLaunch(entry["command"], list(entry.get("args", [])), dict(entry.get("env", {})))


def _from_claude_mcp_add(text: str) -> StdioLaunch | HttpTarget:
    """``claude mcp add [--transport T] [--env K=V]... [--header 'K: V']... NAME (URL | -- COMMAND ARGS...)``."""
    words = shlex.split(text)
    assert words[:3] == ["claude", "mcp", "add"], f"not a claude mcp add line: {text}"
    words = words[3:]
    transport = "stdio"
    env: dict[str, str] = {}
    headers: dict[str, str] = {}
    positional: list[str] = []
    while words:
        word = words.pop(0)
        if word == "--":
            return StdioLaunch(words[0], words[1:], env)
        if word == "--transport":
            transport = words.pop(0)
        elif word == "--env":
            key, _, value = words.pop(0).partition("=")
            env[key] = value
        elif word == "--header":
            key, _, value = words.pop(0).partition(":")
            headers[key.strip()] = value.strip()
        else:
            positional.append(word)
    assert transport == "http" and positional[0] == _SERVER, f"unexpected claude mcp add line: {text}"
    return HttpTarget(positional[1], headers)


def readme_configs(readme: str | None = None) -> dict[str, StdioLaunch | HttpTarget]:
    """Every tagged client configuration of the README, by name."""
    text = readme if readme is not None else (REPO / "README.md").read_text()
    found: dict[str, StdioLaunch | HttpTarget] = {}
    for name, language, body in _BLOCK.findall(text):
        assert name not in found, f"two README configurations are named {name}"
        found[name] = _from_json(body) if language == "json" else _from_claude_mcp_add(body)
    return found

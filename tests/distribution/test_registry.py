"""server.json, manifest.json, the image's label, the README's marker and every version say the same thing.

The MCP registry lists the server from server.json and checks ownership through the README's
``mcp-name:`` line (on PyPI) and the image's ``io.modelcontextprotocol.server.name`` label; Claude Desktop
installs the bundle from manifest.json. A release where one of them drifts is refused here.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from mcp import Client, StdioServerParameters

from tests.distribution.conftest import REPO, mcpb_cli
from tests.distribution.readme_configs import readme_configs
from tests.distribution.registry_rules import SCHEMA_URL, problems

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
README = (REPO / "README.md").read_text()


def server() -> dict[str, Any]:
    document: dict[str, Any] = json.loads((REPO / "server.json").read_text())
    return document


def manifest() -> dict[str, Any]:
    document: dict[str, Any] = json.loads((REPO / "manifest.json").read_text())
    return document


def package(registry_type: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [p for p in server()["packages"] if p["registryType"] == registry_type]
    assert len(found) == 1, f"server.json has {len(found)} {registry_type} packages"
    return found[0]


def dockerfile_label(name: str) -> str:
    match = re.search(rf'{re.escape(name)}="([^"]+)"', (REPO / "Dockerfile.compose-agent").read_text())
    assert match, f"Dockerfile.compose-agent has no {name} label"
    return match.group(1)


def owner_of(name: str) -> str:
    """The GitHub owner a registry name under io.github. claims."""
    namespace, _, _ = name.partition("/")
    assert namespace.startswith("io.github."), f"{name} is not in the io.github namespace"
    return namespace.removeprefix("io.github.")


def test_server_json_is_what_the_registry_accepts() -> None:
    document = server()
    assert document["$schema"] == SCHEMA_URL
    assert problems(document, README) == []


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        (lambda s: s.update(description="x" * 101), "description"),
        (lambda s: s.pop("version"), "'version' is a required property"),
        (lambda s: s.update(name="compose-agent"), "name"),
        (lambda s: s.update(name="io.github.owner/compose-agent-"), "start and end"),
        (lambda s: s.update(version="^0.1.0"), "one specific version"),
        (lambda s: s["packages"][0].update(version="latest"), "packages/0/version"),
        (lambda s: s["packages"][0].pop("transport"), "'transport' is a required property"),
        (lambda s: s["packages"][1].update(identifier="ghcr.io/owner/compose-agent"), "tag or digest"),
        (lambda s: s["packages"][1].update(identifier="quay.io/owner/compose-agent:1"), "registry accepts"),
        (lambda s: s["packages"][1].update(version="0.1.0"), "carries no version"),
        (lambda s: s["packages"][1]["runtimeArguments"][2].update(name="--group-add <gid>"), "bare flag name"),
        (lambda s: s["packages"][0]["packageArguments"].append({"type": "positional"}), "packageArguments"),
    ],
)
def test_the_registry_checks_refuse_what_the_registry_refuses(change: Any, complaint: str) -> None:
    broken = copy.deepcopy(server())
    change(broken)
    assert any(complaint in problem for problem in problems(broken, README)), problems(broken, README)


def test_the_pypi_package_needs_the_readme_marker() -> None:
    assert any("mcp-name" in p for p in problems(server(), README.replace("mcp-name:", "mcp name:")))


def test_one_version_everywhere() -> None:
    document = server()
    assert document["version"] == VERSION
    assert package("pypi")["identifier"] == PYPROJECT["project"]["name"] and package("pypi")["version"] == VERSION
    assert package("oci")["identifier"].endswith(f"/compose-agent:{VERSION}")
    assert manifest()["version"] == VERSION
    assert manifest()["user_config"]["image"]["default"] == package("oci")["identifier"]
    assert dockerfile_label("org.opencontainers.image.version") == VERSION
    for name in ("gateway", "statuspanel", "watchdog"):
        assert f'__version__ = "{VERSION}"' in (REPO / name / "__init__.py").read_text(), name
    assert "compose-agent-" + VERSION + ".mcpb" in README and f"compose_agent-{VERSION}-py3-none-any.whl" in README


def test_one_name_and_one_owner_everywhere() -> None:
    name = server()["name"]
    assert re.findall(r"^<!-- mcp-name: (\S+) -->$", README, re.M) == [name]
    assert dockerfile_label("io.modelcontextprotocol.server.name") == name
    owner = owner_of(name)
    assert server()["repository"] == {"url": f"https://github.com/{owner}/compose-agent", "source": "github"}
    assert manifest()["repository"]["url"] == server()["repository"]["url"]
    assert package("oci")["identifier"] == f"ghcr.io/{owner}/compose-agent:{VERSION}"
    docker = readme_configs()["claude-desktop-docker"]
    assert package("oci")["identifier"] in getattr(docker, "args", [])
    assert server()["description"] == manifest()["description"]


def test_the_changelog_keeps_a_section_per_version() -> None:
    headings = re.findall(r"^## \[([^\]]+)\](.*)$", (REPO / "CHANGELOG.md").read_text(), re.M)
    assert headings and headings[0][0] == "Unreleased"
    for version, rest in headings[1:]:
        assert re.fullmatch(r"\d+\.\d+\.\d+(?:[.-]?\w+)?", version), version
        assert re.fullmatch(r" - \d{4}-\d{2}-\d{2}", rest), f"## [{version}] needs ' - YYYY-MM-DD'"
    released = [v for v, _ in headings[1:]]
    assert len(released) == len(set(released))


def test_mcpb_validates_the_manifest_and_refuses_a_broken_one(tmp_path: Path) -> None:
    good = subprocess.run(
        [*mcpb_cli(), "validate", str(REPO / "manifest.json")], capture_output=True, text=True, timeout=120
    )
    assert good.returncode == 0 and "validation passes" in good.stdout, good.stdout + good.stderr
    broken = manifest()
    del broken["server"]["entry_point"]
    (tmp_path / "manifest.json").write_text(json.dumps(broken))
    bad = subprocess.run(
        [*mcpb_cli(), "validate", str(tmp_path / "manifest.json")], capture_output=True, text=True, timeout=120
    )
    assert bad.returncode != 0 and "entry_point" in bad.stdout


def test_the_manifest_settings_are_the_ones_its_launcher_uses() -> None:
    document = manifest()
    used = set(re.findall(r"\$\{user_config\.(\w+)\}", json.dumps(document["server"]["mcp_config"])))
    assert used == set(document["user_config"])
    launcher = (REPO / "scripts" / "mcpb" / "compose-agent-docker.sh").read_text()
    for variable in document["server"]["mcp_config"]["env"]:
        assert variable in launcher, variable
    assert document["server"]["entry_point"] in document["server"]["mcp_config"]["args"][0]


@pytest.mark.anyio
async def test_the_manifest_lists_the_tools_the_server_offers(tmp_path: Path) -> None:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "gateway", "serve", "--transport", "stdio", "--stacks-dir", str(tmp_path)],
        env={"COMPOSE_AGENT_STATE_DIR": str(tmp_path / "state")},
    )
    async with Client(params) as client:
        offered = {tool.name for tool in (await client.list_tools()).tools}
    assert {tool["name"] for tool in manifest()["tools"]} == offered


def test_the_release_script_explains_itself_and_refuses_what_it_does_not_know() -> None:
    script = str(REPO / "scripts" / "release.sh")
    helped = subprocess.run(["bash", script, "--help"], capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0 and "--snapshot" in helped.stdout and "--only" in helped.stdout
    refused = subprocess.run(["bash", script, "--only", "docs"], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "--only takes wheel, image or bundle" in refused.stderr

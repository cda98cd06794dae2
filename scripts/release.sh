#!/usr/bin/env bash
# Build a release of compose-agent and check each artefact as a user would meet it.
#
#   bash scripts/release.sh [--out DIR] [--only wheel|image|bundle]... [--snapshot] [--base-image IMAGE]
#
#   --out DIR           where the wheel and the bundle go (default: dist/ in this checkout)
#   --only PART         build and check only this part; repeat for several (default: all three)
#   --snapshot          build from a version that CHANGELOG.md has no section for yet (a test build)
#   --base-image IMAGE  the image's BASE_IMAGE build argument, for engines without a registry
#                       (scripts/build-base-image.sh makes compose-agent-base:bookworm)
#
# What it builds, and how it checks it:
#   1. The wheel, from a clean copy of the three package folders (never from a stale build/), into a
#      throwaway venv with the compose-cli extra: `compose-agent --version` names the release, and each
#      console script answers --help.
#   2. The image compose-agent:VERSION (Dockerfile.compose-agent, target compose-agent): its label names
#      server.json's server, it runs as an unprivileged user, and `compose-agent --version`,
#      `docker stack --help` and `docker-compose version` answer inside it.
#   3. The .mcpb bundle (manifest.json and scripts/mcpb/compose-agent-docker.sh as server/), validated
#      and packed with @anthropic-ai/mcpb from the npm tree setup.sh installs.
# First it checks that pyproject.toml, server.json, manifest.json, the image's label, the packages'
# __version__ and the README's mcp-name line agree. It prints each file's size and SHA-256 (server.json
# needs the bundle's as fileSha256 if the bundle is ever listed there). It publishes nothing.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$here/dist"
parts=()
snapshot=0
base_image=""
say() { printf '[release] %s\n' "$*" >&2; }
fail() {
  printf '[release] FAILED: %s\n' "$1" >&2
  shift
  for hint in "$@"; do printf '[release]   %s\n' "$hint" >&2; done
  exit 1
}
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="$(mkdir -p "$2" && cd "$2" && pwd)"; shift 2 ;;
    --only)
      case "${2:-}" in wheel | image | bundle) parts+=("$2") ;; *) fail "--only takes wheel, image or bundle, not '${2:-}'" ;; esac
      shift 2 ;;
    --snapshot) snapshot=1; shift ;;
    --base-image) base_image="$2"; shift 2 ;;
    -h | --help) sed -n '2,/^set /{/^#/p}' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) fail "unknown option: $1 (try --help)" ;;
  esac
done
[ "${#parts[@]}" -gt 0 ] || parts=(wheel image bundle)
wants() { case " ${parts[*]} " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

venv="$here/.venv"
python="$venv/bin/python"
[ -x "$python" ] || fail "no venv at $venv" "run bash scripts/setup.sh first"
cd "$here"
mkdir -p "$out"
work="$(mktemp -d /tmp/compose-agent-release.XXXXXX)"
trap 'rm -rf "$work"' EXIT

# -- 0. One version and one name everywhere ---------------------------------------------------------
read -r version name < <("$python" - <<'EOF'
import json, re, sys, tomllib
from pathlib import Path

version = tomllib.loads(Path("pyproject.toml").read_text())["project"]["version"]
server = json.loads(Path("server.json").read_text())
manifest = json.loads(Path("manifest.json").read_text())
dockerfile = Path("Dockerfile.compose-agent").read_text()
label = re.search(r'io\.modelcontextprotocol\.server\.name="([^"]+)"', dockerfile)
image_version = re.search(r'org\.opencontainers\.image\.version="([^"]+)"', dockerfile)
marker = re.findall(r"^<!-- mcp-name: (\S+) -->$", Path("README.md").read_text(), re.M)
init_versions = {
    package: re.search(r'^__version__ = "([^"]+)"', Path(package, "__init__.py").read_text(), re.M).group(1)
    for package in ("gateway", "statuspanel", "watchdog")
}
problems = []
if server["version"] != version:
    problems.append(f"server.json version {server['version']} != pyproject.toml {version}")
for package in server.get("packages", []):
    if package["registryType"] == "oci" and not package["identifier"].endswith(f":{version}"):
        problems.append(f"server.json's image {package['identifier']} is not tagged {version}")
    elif package["registryType"] != "oci" and package.get("version") != version:
        problems.append(f"server.json's {package['registryType']} package is version {package.get('version')}")
if manifest["version"] != version:
    problems.append(f"manifest.json version {manifest['version']} != {version}")
if not label or label.group(1) != server["name"]:
    problems.append("Dockerfile.compose-agent's io.modelcontextprotocol.server.name label is not server.json's name")
if not image_version or image_version.group(1) != version:
    problems.append("Dockerfile.compose-agent's org.opencontainers.image.version label is not the version")
if marker != [server["name"]]:
    problems.append(f"README.md needs exactly one line '<!-- mcp-name: {server['name']} -->', has {marker}")
problems += [f"{p}/__init__.py __version__ {v} != {version}" for p, v in init_versions.items() if v != version]
if problems:
    print("\n".join(problems), file=sys.stderr)
    sys.exit(1)
print(version, server["name"])
EOF
) || fail "the version or the server name disagree (see above)" "bring them in step; tests/distribution/test_registry.py says the same"
say "compose-agent $version ($name): ${parts[*]} into $out"
if [ "$snapshot" = 0 ] && ! grep -Eq "^## \[$version\] - [0-9]{4}-[0-9]{2}-[0-9]{2}$" CHANGELOG.md; then
  fail "CHANGELOG.md has no section '## [$version] - YYYY-MM-DD'" \
    "move the [Unreleased] entries under it (Keep a Changelog), or build a test release with --snapshot"
fi
case "$name" in
  *owner-placeholder*) say "note: the server name still holds the placeholder owner; see docs/install.md before publishing" ;;
esac

checksum() { sha256sum "$1" | cut -d' ' -f1; }
report() { say "$(basename "$1"): $(stat -c %s "$1") bytes, sha256 $(checksum "$1")"; }

# -- 1. The wheel ---------------------------------------------------------------------------------------
if wants wheel; then
  say "building the wheel from a clean copy of the packages"
  mkdir -p "$work/src"
  tar -c --exclude=__pycache__ --exclude='*.pyc' pyproject.toml README.md gateway statuspanel watchdog | tar -x -C "$work/src"
  "$python" -m pip wheel -q --no-deps -w "$work/wheel" "$work/src" || fail "pip wheel" "see pip's message above"
  wheel="$(ls "$work"/wheel/compose_agent-"$version"-py3-none-any.whl)"
  say "checking it in a fresh venv (compose-cli extra, pinned by constraints.txt)"
  python3 -m venv "$work/check"
  "$work/check/bin/pip" install -q -c constraints.txt "$wheel[compose-cli]" || fail "pip install $wheel" "see pip's message above"
  said="$("$work/check/bin/compose-agent" --version)"
  [ "$said" = "compose-agent $version" ] || fail "compose-agent --version said '$said', not 'compose-agent $version'"
  for command in "compose-agent --help" "compose-agent serve --help" "status-panel --help" "compose-watchdog --help" \
    "docker-compose version"; do
    # shellcheck disable=SC2086
    "$work/check/bin/"$command >/dev/null || fail "$command (from the wheel)"
  done
  cp "$wheel" "$out/"
  report "$out/$(basename "$wheel")"
fi

# -- 2. The image ---------------------------------------------------------------------------------------
if wants image; then
  image="compose-agent:$version"
  build_args=()
  [ -n "$base_image" ] && build_args=(--build-arg "BASE_IMAGE=$base_image")
  say "building the image $image"
  docker build -q -f Dockerfile.compose-agent --target compose-agent "${build_args[@]}" -t "$image" . >/dev/null ||
    fail "docker build" "without a registry, build a base first: bash scripts/build-base-image.sh, then --base-image compose-agent-base:bookworm"
  labelled="$(docker image inspect -f '{{index .Config.Labels "io.modelcontextprotocol.server.name"}}' "$image")"
  [ "$labelled" = "$name" ] || fail "the image's label names '$labelled', not '$name'"
  user="$(docker image inspect -f '{{.Config.User}}' "$image")"
  case "$user" in "" | root | 0 | 0:*) fail "the image runs as '${user:-root}', not an unprivileged user" ;; esac
  said="$(docker run --rm "$image" --version)"
  [ "$said" = "compose-agent $version" ] || fail "the image's compose-agent --version said '$said'"
  docker run --rm --entrypoint docker "$image" stack --help >/dev/null || fail "docker stack --help in the image"
  docker run --rm --entrypoint docker-compose "$image" version >/dev/null || fail "docker-compose version in the image"
  say "image $image: $(docker image inspect -f '{{.Id}}' "$image"), $(docker image inspect -f '{{.Size}}' "$image") bytes, user $user"
  say "  docker CLI $(docker run --rm --entrypoint docker "$image" --version)"
fi

# -- 3. The bundle --------------------------------------------------------------------------------------
if wants bundle; then
  tools="${MCP_TOOLS_DIR:-$venv/mcp-tools}"
  mcpb="$tools/node_modules/@anthropic-ai/mcpb/dist/cli/cli.js"
  node="$venv/bin/node"
  [ -f "$mcpb" ] && [ -x "$node" ] || fail "no mcpb at $mcpb" "run bash scripts/setup.sh (it installs scripts/mcp-tools)"
  say "validating manifest.json and packing the bundle"
  stage="$work/bundle"
  mkdir -p "$stage/server"
  cp manifest.json "$stage/"
  install -m 0755 scripts/mcpb/compose-agent-docker.sh "$stage/server/compose-agent-docker.sh"
  [ -f icon.png ] && cp icon.png "$stage/"
  "$node" "$mcpb" validate "$stage/manifest.json" >&2 || fail "mcpb validate manifest.json"
  bundle="$out/compose-agent-$version.mcpb"
  "$node" "$mcpb" pack "$stage" "$bundle" >"$work/pack.log" 2>&1 || { cat "$work/pack.log" >&2; fail "mcpb pack"; }
  "$node" "$mcpb" info "$bundle" >&2 || fail "mcpb info $bundle"
  report "$bundle"
fi
say "done"

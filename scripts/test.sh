#!/usr/bin/env bash
# Run the whole test suite against real parts: dockerd, the Compose v2 CLI, OpenBao, the MCP
# Inspector and headless Chromium. Sets the machine up first (see scripts/setup.sh).
#
#   bash scripts/test.sh [pytest args]     e.g. -m 'not e2e' or tests/gateway
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# .ci/run sets this after running setup itself.
[ "${COMPOSE_AGENT_SETUP_DONE:-}" = 1 ] || bash "$here/scripts/setup.sh"
cd "$here"
export MCP_INSPECTOR="${MCP_INSPECTOR:-${XDG_CACHE_HOME:-$HOME/.cache}/compose-agent/inspector/node_modules/.bin/mcp-inspector}"
echo "[test] lint" >&2
ruff check .
ruff format --check .
mypy
echo "[test] pytest" >&2
exec python3 -m pytest "$@"

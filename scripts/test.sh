#!/usr/bin/env bash
# Run the whole test suite against real parts: dockerd, the Compose v2 CLI, OpenBao, the MCP
# Inspector and headless Chromium. Sets the machine up first (see scripts/setup.sh), then runs
# the linters and pytest from the project's venv at .venv.
#
#   bash scripts/test.sh [pytest args]     e.g. -m 'not e2e' or tests/gateway
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# .ci/run sets this after running setup itself.
[ "${COMPOSE_AGENT_SETUP_DONE:-}" = 1 ] || bash "$here/scripts/setup.sh"
venv="$here/.venv"
[ -x "$venv/bin/python" ] || { echo "[test] FAILED: no venv at $venv; run bash scripts/setup.sh" >&2; exit 1; }
# The venv first on PATH: the tests spawn its console scripts, and the Inspector's `#!/usr/bin/env node`
# finds the venv's Node (>= 22.19), not an older one of the machine's.
export VIRTUAL_ENV="$venv" PATH="$venv/bin:$PATH"
# What setup installed, unless the caller names others.
export MCP_INSPECTOR="${MCP_INSPECTOR:-$venv/inspector/node_modules/.bin/mcp-inspector}"
export MCP_TOOLS_DIR="${MCP_TOOLS_DIR:-$venv/mcp-tools}"
echo "[test] MCP Inspector: $MCP_INSPECTOR (node $(node --version))" >&2
cd "$here"
echo "[test] lint" >&2
ruff check .
ruff format --check .
mypy
echo "[test] pytest" >&2
exec python -m pytest "$@"

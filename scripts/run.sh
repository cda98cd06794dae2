#!/usr/bin/env bash
# Run compose-agent with embedded defaults: no Vault, the example stack in ./stacks, tokens
# generated on first start and printed with the MCP client configuration to paste.
#
#   bash scripts/run.sh [extra `compose-agent serve` flags]
#
# It first runs `scripts/setup.sh --minimal`: Debian packages that are missing, dockerd, and the
# project in its own venv at .venv. The gateway then runs from that venv.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$here/scripts/setup.sh" --minimal
venv="$here/.venv"
# The gateway's own child processes (the Compose CLI) come from the venv too.
export VIRTUAL_ENV="$venv" PATH="$venv/bin:$PATH"

# The example stack's image is built here from the static busybox: no registry is needed.
image="compose-agent-example-busybox:latest"
if ! docker image inspect "$image" >/dev/null 2>&1; then
  ctx="$(mktemp -d)"
  trap 'rm -rf "$ctx"' EXIT
  cp /bin/busybox "$ctx/busybox"
  printf 'FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox","--install","-s","/bin"]\n' >"$ctx/Dockerfile"
  docker build -q -t "$image" "$ctx" >/dev/null ||
    { echo "[run] FAILED: docker build -t $image (from /bin/busybox); see the engine's message above" >&2; exit 1; }
  rm -rf "$ctx"
  trap - EXIT
  echo "[run] built $image" >&2
fi

export COMPOSE_AGENT_STATE_DIR="${COMPOSE_AGENT_STATE_DIR:-$here/.state}"
cd "$here"
echo "[run] try it: the 'hello' stack is in ./stacks; stop with Ctrl-C" >&2
exec "$venv/bin/compose-agent" serve --stacks-dir "$here/stacks" "$@"

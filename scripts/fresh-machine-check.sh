#!/usr/bin/env bash
# Check that the README's commands work on a fresh Debian 12 machine, as a new user would run them.
#
#   bash scripts/fresh-machine-check.sh [--suite] [--rebuild] [--keep]
#
# A fresh machine is a container of a debootstrap root filesystem that starts its own dockerd, with a
# clean clone of this repository's HEAD (not the working tree) in /root/compose-agent, run as root:
#   - minbase + python3 (a cloud image): `bash scripts/run.sh` serves, its tokens are saved (0600), and
#     the project's own MCP client lists the example stack and brings it up (scripts/mcp_smoke.py),
#     also through the printed stdio configuration as pasted; then the full `bash scripts/setup.sh`,
#     after which the MCP Inspector calls a tool over HTTP and Playwright drives Chromium once.
#   - minbase alone (no python3 at all): `bash scripts/run.sh` serves the same way.
#   --suite    also run the whole `bash scripts/test.sh` in the first container (about 20 minutes more)
#   --rebuild  rebuild the two root filesystem images (kept between runs, tagged by recipe version)
#   --keep     leave the containers and their volumes for a look inside (a failed run too)
#
# Needs root, a Docker engine that can run a container with its own dockerd (no --privileged needed),
# git, and debootstrap (installed by scripts/setup.sh). Prints a progress line per step with the time.
set -euo pipefail

suite=0
rebuild=0
keep=0
for arg in "$@"; do
  case "$arg" in
    --suite) suite=1 ;;
    --rebuild) rebuild=1 ;;
    --keep) keep=1 ;;
    -h | --help) sed -n '2,/^set /{/^#/p}' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "[fresh] unknown option: $arg (try --help)" >&2; exit 2 ;;
  esac
done
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
suite_name=bookworm
mirror="${MIRROR:-http://deb.debian.org/debian}"
ca_bundle="${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
# Bump when the image recipe below changes, so that cached images are rebuilt.
recipe=1
image_repo="compose-agent-fresh-debian12"
run_id="fresh$(head -c 4 /dev/urandom | od -An -tx1 | tr -d ' \n')"
project_dir=/root/compose-agent
# Every in-container step is bounded, so a hang fails the check instead of eating CI's 90 minutes.
run_timeout=1200
setup_timeout=1500
suite_timeout=3600
started=$SECONDS

say() { printf '[fresh %s] %s\n' "$(date -u -d "@$((SECONDS - started))" +%M:%S)" "$*" >&2; }
fail() {
  say "FAILED: $1"
  shift
  for hint in "$@"; do say "  $hint"; done
  exit 1
}

[ "$(id -u)" = 0 ] || fail "this check needs root (debootstrap, and a container with its own dockerd)"
for tool in docker git; do
  command -v "$tool" >/dev/null || fail "$tool is not installed" "run bash scripts/setup.sh first"
done
command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] ||
  fail "debootstrap is not installed" "run bash scripts/setup.sh first (or apt-get install debootstrap)"
docker info >/dev/null 2>&1 || fail "no Docker engine answers" "run bash scripts/setup.sh first"

work="$(mktemp -d /tmp/compose-agent-fresh.XXXXXX)"
containers=()
cleanup() {
  local rc=$?
  for name in "${containers[@]}"; do
    if [ "$keep" = 1 ]; then
      say "kept container $name and volume $name-docker (docker rm -f $name; docker volume rm $name-docker)"
      continue
    fi
    docker rm -f "$name" >/dev/null 2>&1 || true
    docker volume rm "$name-docker" >/dev/null 2>&1 || true
  done
  # A failed debootstrap can leave proc/sys mounted inside a root filesystem: never rm -rf through a mount.
  for mnt in $(awk -v w="$work" '$2 ~ "^"w {print $2}' /proc/mounts | sort -r); do umount -l "$mnt" || true; done
  rm -rf "$work"
  [ "$rc" = 0 ] && say "passed in $((SECONDS - started)) s" || say "failed after $((SECONDS - started)) s"
}
trap cleanup EXIT

# -- The root filesystems: debootstrap minbase, with this machine's CA ------------------------------
# add_host_cas ROOTFS: the certificates this machine trusts beyond Debian's, as local CAs of the image.
# Containers reach the registries only through this machine's TLS interception; as local CAs they also
# survive a later update-ca-certificates.
add_host_cas() {
  local rootfs="$1"
  python3 - "$ca_bundle" "$rootfs/etc/ssl/certs/ca-certificates.crt" "$rootfs/usr/local/share/ca-certificates" <<'EOF'
import re, sys
from pathlib import Path

pem = re.compile(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", re.S)
host, debian, local = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
known = {"".join(c.split()) for c in pem.findall(debian.read_text())}
extra = [c for c in pem.findall(host.read_text()) if "".join(c.split()) not in known]
local.mkdir(parents=True, exist_ok=True)
for n, cert in enumerate(extra):
    (local / f"host-{n}.crt").write_text(cert + "\n")
with debian.open("a") as bundle:
    bundle.writelines(cert + "\n" for cert in extra)
print(len(extra))
EOF
}

build_image() {
  local variant="$1" include="$2" tag="$3" rootfs="$work/rootfs-$1" added old
  say "building the $variant root filesystem (debootstrap --variant=minbase --include=$include $suite_name)"
  debootstrap --variant=minbase --include="$include" "$suite_name" "$rootfs" "$mirror" \
    >"$work/debootstrap-$variant.log" 2>&1 || {
    tail -n 20 "$work/debootstrap-$variant.log" >&2
    fail "debootstrap $variant (its log's end is above)" "check the network to $mirror"
  }
  added="$(add_host_cas "$rootfs")"
  # As a cloud image has them: the point releases' updates and the security archive.
  cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $mirror $suite_name main
deb $mirror $suite_name-updates main
deb http://deb.debian.org/debian-security $suite_name-security main
EOF
  # No package lists, as on a machine that never ran apt-get update.
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb
  old="$(docker image inspect -f '{{.Id}}' "$tag" 2>/dev/null || true)"
  tar -C "$rootfs" --numeric-owner -c . | docker import \
    -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' -c 'ENV LANG=C.UTF-8' \
    -m "fresh Debian 12 $variant (scripts/fresh-machine-check.sh)" - "$tag" >/dev/null
  rm -rf "$rootfs"
  # The image this one replaces (--rebuild) would otherwise stay behind untagged.
  if [ -n "$old" ]; then docker rmi "$old" >/dev/null 2>&1 || true; fi
  say "imported $tag ($added CA certificate(s) of this machine added)"
}

image_for() {
  local variant="$1" include="$2" tag="$image_repo:$1-r$recipe"
  if [ "$rebuild" = 1 ] || ! docker image inspect "$tag" >/dev/null 2>&1; then
    build_image "$variant" "$include" "$tag"
  else
    say "reusing $tag (--rebuild makes it anew)"
  fi
  printf '%s' "$tag"
}

# -- A fresh machine: a container with its own dockerd ------------------------------------------
# start_machine NAME IMAGE: no --privileged (this engine refuses it); every capability but
# SYS_RESOURCE, all devices, and writable cgroup hierarchies mounted inside.
start_machine() {
  local name="$1" image="$2"
  containers+=("$name")
  docker volume create "$name-docker" >/dev/null
  docker run -d --name "$name" --hostname "$name" --init \
    --cap-add ALL --cap-drop SYS_RESOURCE \
    --security-opt seccomp=unconfined --security-opt apparmor=unconfined --security-opt systempaths=unconfined \
    --device-cgroup-rule 'a *:* rwm' --cgroupns private \
    -v "$name-docker:/var/lib/docker" "$image" sleep infinity >/dev/null
  docker exec "$name" sh -ec '
    if [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ]; then
      umount /sys/fs/cgroup; mount -t cgroup2 cgroup2 /sys/fs/cgroup
    else
      umount -R /sys/fs/cgroup; mount -t tmpfs tmpfs /sys/fs/cgroup
      for sub in cpu cpuacct cpuset memory devices freezer blkio pids; do
        mkdir -p /sys/fs/cgroup/$sub; mount -t cgroup -o $sub cgroup /sys/fs/cgroup/$sub
      done
      mkdir -p /sys/fs/cgroup/systemd; mount -t cgroup -o none,name=systemd cgroup /sys/fs/cgroup/systemd
    fi' || fail "mounting writable cgroups in $name" "this engine cannot run a nested dockerd this way"
  docker cp "$work/clone" "$name:$project_dir"
}

# in_machine NAME TIMEOUT <<<SCRIPT: a bash script (on stdin) in the machine, from the project folder, bounded.
in_machine() {
  docker exec -i -w "$project_dir" "$1" timeout "$2" bash -s
}

# serve NAME: `bash scripts/run.sh` in the background, until /health answers; then an MCP session.
check_run_sh() {
  local name="$1" label="$2" t0=$SECONDS deadline=$((SECONDS + run_timeout)) last=""
  say "$label: bash scripts/run.sh"
  docker exec -d "$name" bash -c "cd $project_dir && echo \$\$ >/root/run.pid && exec bash scripts/run.sh >/root/run.log 2>&1"
  until in_machine "$name" 20 >/dev/null 2>&1 \
    <<<".venv/bin/python -c 'import urllib.request as u; u.urlopen(\"http://127.0.0.1:8765/health\", timeout=5)'"; do
    if ! docker exec "$name" sh -c 'kill -0 "$(cat /root/run.pid)"' 2>/dev/null; then
      docker exec "$name" tail -n 40 /root/run.log >&2 || true
      fail "$label: scripts/run.sh exited before /health answered (its log's end is above)"
    fi
    [ "$SECONDS" -lt "$deadline" ] || {
      docker exec "$name" tail -n 40 /root/run.log >&2 || true
      fail "$label: /health did not answer within $run_timeout s"
    }
    line="$(docker exec "$name" sh -c 'grep "^\[" /root/run.log | tail -n 1' 2>/dev/null || true)"
    if [ -n "$line" ] && [ "$line" != "$last" ]; then say "$label:   $line"; last="$line"; fi
    sleep 3
  done
  say "$label: run.sh serves, /health answers ($((SECONDS - t0)) s from nothing)"
  docker cp "$here/scripts/mcp_smoke.py" "$name:/root/mcp_smoke.py"
  in_machine "$name" 300 <<<".venv/bin/python /root/mcp_smoke.py --state .state --run-log /root/run.log" ||
    fail "$label: the MCP session against run.sh (its messages are above)"
}

git -C "$here" rev-parse --verify -q HEAD >/dev/null || fail "$here has no commit to check"
[ -z "$(git -C "$here" status --porcelain --untracked-files=no)" ] ||
  say "note: uncommitted changes are not checked; the clone holds HEAD only"
git clone -q --no-hardlinks "$here" "$work/clone"
say "checking $(git -C "$work/clone" log -1 --format='%h %s')"

python3_image="$(image_for python3 ca-certificates,python3)"
minbase_image="$(image_for minbase ca-certificates)"

# -- minbase + python3: run.sh, then the full set-up, the Inspector and Chromium ---------------------
machine="$run_id-py"
start_machine "$machine" "$python3_image"
say "python3: started $machine ($(in_machine "$machine" 10 <<<'python3 --version' 2>&1))"
check_run_sh "$machine" python3

t0=$SECONDS
say "python3: bash scripts/setup.sh (the full set-up, for the tests)"
in_machine "$machine" "$setup_timeout" <<<'bash scripts/setup.sh' 2>&1 | sed -u 's/^/    /' >&2 ||
  fail "python3: bash scripts/setup.sh (its output is above)"
say "python3: setup.sh done in $((SECONDS - t0)) s"

say "python3: the MCP Inspector calls ps over Streamable HTTP"
in_machine "$machine" 120 >&2 <<'EOF' || fail "python3: mcp-inspector --cli ... --tool-name ps (its output is above)"
set -euo pipefail
export PATH="$PWD/.venv/bin:$PATH"
token="$(python -c 'import json; print(json.load(open(".state/tokens.json"))["compose_agent_token"])')"
out="$(.venv/inspector/node_modules/.bin/mcp-inspector --cli http://127.0.0.1:8765/mcp --transport http \
  --header "Authorization: Bearer $token" --method tools/call --tool-name ps --tool-arg project=hello 2>&1)" ||
  { echo "$out"; exit 1; }
grep -F '"state": "running"' >/dev/null <<<"$out" || { echo "$out"; exit 1; }
echo "[fresh]   the Inspector (node $(node --version)) sees the hello stack running"
EOF

say "python3: Playwright drives Chromium to the gateway's /health"
in_machine "$machine" 120 >&2 <<'EOF' || fail "python3: Playwright and Chromium (the traceback is above)"
.venv/bin/python - <<'PY'
import asyncio

from playwright.async_api import async_playwright


async def main() -> None:
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
        page = await browser.new_page()
        await page.goto("http://127.0.0.1:8765/health")
        body = (await page.inner_text("body")).strip()
        version = browser.version
        await browser.close()
    assert "ok" in body.lower(), body
    print(f"[fresh]   Chromium {version} shows /health: {body[:80]}")


asyncio.run(main())
PY
EOF

if [ "$suite" = 1 ]; then
  docker exec "$machine" sh -c 'kill "$(cat /root/run.pid)"' || true
  t0=$SECONDS
  say "python3: bash scripts/test.sh (the whole suite; log: /root/test.log in $machine)"
  in_machine "$machine" "$suite_timeout" <<<'bash scripts/test.sh >/root/test.log 2>&1' || {
    docker exec "$machine" tail -n 60 /root/test.log >&2 || true
    docker cp "$machine:/root/test.log" "/tmp/$run_id-test.log" 2>/dev/null || true
    fail "python3: bash scripts/test.sh (its log's end is above; all of it: /tmp/$run_id-test.log)"
  }
  docker exec "$machine" tail -n 15 /root/test.log >&2
  say "python3: the suite passed in $((SECONDS - t0)) s"
fi
[ "$keep" = 1 ] || { docker rm -f "$machine" >/dev/null; docker volume rm "$machine-docker" >/dev/null; }

# -- minbase alone: no python3 at all -------------------------------------------------------------
machine="$run_id-min"
start_machine "$machine" "$minbase_image"
in_machine "$machine" 10 <<<'! command -v python3' >/dev/null || fail "the minbase image has a python3"
say "minbase: started $machine (no python3)"
check_run_sh "$machine" minbase
say "all checks passed"

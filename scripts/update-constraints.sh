#!/usr/bin/env bash
# Regenerate constraints.txt, the lock that pins every Python distribution that setup, CI and the
# images install (pyproject.toml keeps the ranges; this file keeps the versions that were tested).
#
#   bash scripts/update-constraints.sh                 add pins for new dependencies, keep the rest
#   bash scripts/update-constraints.sh --upgrade       move every pin to the newest release in range
#   bash scripts/update-constraints.sh --upgrade-package mcp   move one
#
# It resolves all extras for every platform and Python >= 3.11 (--universal), with uv from PyPI in
# a throwaway venv. Afterwards run `bash scripts/setup.sh` (it reinstalls when the file changes) and
# the suite, and commit the file with the change that needed it.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
uv_version="0.13.8"
say() { printf '[constraints] %s\n' "$*" >&2; }

tool="$(mktemp -d /tmp/compose-agent-uv.XXXXXX)"
trap 'rm -rf "$tool"' EXIT
python3 -m venv "$tool" || { say "FAILED: python3 -m venv $tool; install python3-venv (or run scripts/setup.sh first)"; exit 1; }
"$tool/bin/python" -m pip install -q --disable-pip-version-check "uv==$uv_version" ||
  { say "FAILED: pip install uv==$uv_version; check that PyPI is reachable"; exit 1; }

cd "$here"
# --native-tls: trust the system's CA bundle, as pip does, where TLS to the registry is intercepted.
"$tool/bin/uv" pip compile --quiet --native-tls --universal --python-version 3.11 --all-extras \
  --custom-compile-command "bash scripts/update-constraints.sh" \
  "$@" pyproject.toml -o constraints.txt ||
  { say "FAILED: uv pip compile; see its message above (a range in pyproject.toml that nothing satisfies?)"; exit 1; }
say "wrote constraints.txt ($(grep -c '==' constraints.txt) pins); run bash scripts/setup.sh and the suite, then commit it"

#!/bin/sh
# The server of the .mcpb bundle (server/compose-agent-docker.sh in it): runs the compose-agent image
# over stdio, one container per session, for a desktop client on the Docker host. manifest.json hands
# the person's settings over in the environment:
#   COMPOSE_AGENT_BUNDLE_STACKS_DIR  the stacks folder, an absolute path (required); mounted at the same
#                                    path inside, so that Compose's bind mounts resolve on the host
#   COMPOSE_AGENT_BUNDLE_READ_ONLY   true or false: true offers only the read tools
#   COMPOSE_AGENT_BUNDLE_IMAGE       the image to run
# stdout belongs to the protocol: every message of this script goes to stderr.
set -eu

fail() {
  echo "compose-agent bundle: $*" >&2
  exit 1
}

# Desktop applications start with a short PATH; these are where Docker Engine and Docker Desktop put docker.
PATH="$PATH:/usr/local/bin:/usr/bin:/opt/homebrew/bin:/Applications/Docker.app/Contents/Resources/bin"
command -v docker >/dev/null 2>&1 || fail "no docker command found; install Docker Engine or Docker Desktop"

stacks="${COMPOSE_AGENT_BUNDLE_STACKS_DIR:-}"
image="${COMPOSE_AGENT_BUNDLE_IMAGE:-}"
[ -n "$image" ] || fail "no image is set (the bundle's Image setting)"
case "$stacks" in
  /*) ;;
  *) fail "the stacks folder must be an absolute path, not '$stacks' (the bundle's Stacks folder setting)" ;;
esac
# docker run -v splits on ':'; a path holding one cannot be mounted that way.
case "$stacks" in
  *:*) fail "the stacks folder '$stacks' holds a ':', which docker run -v cannot mount; rename or link it" ;;
esac
[ -d "$stacks" ] || fail "the stacks folder '$stacks' does not exist"

read_only=""
case "${COMPOSE_AGENT_BUNDLE_READ_ONLY:-false}" in
  true) read_only="--read-only" ;;
  false) ;;
  *) fail "read-only must be true or false, not '${COMPOSE_AGENT_BUNDLE_READ_ONLY}'" ;;
esac

socket=/var/run/docker.sock
# The image runs as an unprivileged user, which reaches the socket through its group. On a Linux host
# that is the group of the host's socket file. Docker Desktop mounts the socket of its VM instead, and
# BSD stat has no -c: then the engine itself says, from a one-off container of the same image.
gid="$(stat -c %g "$socket" 2>/dev/null || true)"
if [ -z "$gid" ]; then
  gid="$(docker run --rm --entrypoint stat -v "$socket:$socket" "$image" -c %g "$socket")" ||
    fail "could not read the group of the Docker socket through the engine (is Docker running?)"
fi
case "$gid" in
  "" | *[!0-9]*) fail "the Docker socket's group is not a number: '$gid'" ;;
esac

# $read_only is empty or one word: unquoted on purpose, so that empty adds no argument.
# shellcheck disable=SC2086
exec docker run -i --rm --init --no-healthcheck --group-add "$gid" \
  -v "$socket:$socket" -v "$stacks:$stacks" \
  "$image" serve --transport stdio --stacks-dir "$stacks" $read_only

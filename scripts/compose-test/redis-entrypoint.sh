#!/bin/sh
# The official redis image's entrypoint, as far as the compose file relies on it:
# `redis-server ARGS` starts with protected mode off; anything else runs as given.
set -e
if [ "${1:-}" = redis-server ]; then
  shift
  exec redis-server --protected-mode no "$@"
fi
exec "$@"

#!/bin/sh
# rootfs.sh DEST FILE...: copies each FILE into DEST at the same path and, for a
# dynamically linked executable, every shared library it loads (as ldd resolves
# them, the dynamic loader included), so that DEST can be the whole root of a
# FROM scratch image. Used by deploy/Dockerfile; fails on a library ldd cannot find.
set -eu
dest=$1
shift

put() {
  [ -e "$dest$1" ] && return 0
  mkdir -p "$dest$(dirname "$1")"
  cp -L "$1" "$dest$1"
}

for f in "$@"; do
  put "$f"
  # Not an ELF executable (a script, a data file): nothing more to copy.
  libs=$(ldd "$f" 2>/dev/null) || continue
  if printf '%s\n' "$libs" | grep -q 'not found'; then
    echo "rootfs.sh: $f: missing libraries:" >&2
    printf '%s\n' "$libs" | grep 'not found' >&2
    exit 1
  fi
  for lib in $(printf '%s\n' "$libs" | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i }'); do
    put "$lib"
  done
done

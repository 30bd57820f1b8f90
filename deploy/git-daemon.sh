#!/bin/sh
# The `config-repo` service of docker-compose.yml: serves a git repository over
# git:// for the switchyard replicas to follow (`--config-repo git://config-repo/config.git`).
#
# When $GIT_ROOT/config.git has no `main` branch yet (first start, or a first start
# that failed half-way), it makes one commit on `main` there holding the files of
# $SEED_DIR (deploy/config-repo in the image); later starts keep what was pushed
# since (the compose file keeps $GIT_ROOT on a volume).
# Pushes are accepted anonymously (receive-pack is on): this is a demo service for a
# private network, not a git server to expose.
#
#   SEED_DIR    files of the first commit        (default /usr/share/switchyard/config-repo)
#   GIT_ROOT    directory served                 (default /srv/git)
#   GIT_LISTEN  address to listen on             (default 0.0.0.0)
#   GIT_PORT    port                             (default 9418)
#   SEED_ONLY   1: seed, then exit without serving (the image build's check)
set -eu

seed=${SEED_DIR:-/usr/share/switchyard/config-repo}
root=${GIT_ROOT:-/srv/git}
listen=${GIT_LISTEN:-0.0.0.0}
port=${GIT_PORT:-9418}
repo="$root/config.git"

if ! git --git-dir "$repo" rev-parse --verify -q refs/heads/main > /dev/null 2>&1; then
  [ -f "$seed/config.yaml" ] || { echo "git-daemon.sh: no $seed/config.yaml to seed from" >&2; exit 1; }
  mkdir -p "$root"
  git init -q --bare -b main "$repo"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  git -C "$work" init -q -b main
  cp -R "$seed"/. "$work"/
  git -C "$work" add --all
  git -C "$work" -c user.name="switchyard" -c user.email="switchyard@localhost" \
    commit -q -m "Seed from deploy/config-repo"
  git -C "$work" push -q "$repo" main
  rm -rf "$work"
  trap - EXIT
  echo "git-daemon.sh: seeded $repo from $seed"
fi

[ "${SEED_ONLY:-0}" != 1 ] || exit 0
echo "git-daemon.sh: serving $root on git://$listen:$port/ (push enabled)"
# git-daemon itself rather than the `git daemon` wrapper, so that it is this
# process (PID 1 in a container) and a signal reaches it.
exec "$(git --exec-path)/git-daemon" --reuseaddr --export-all --enable=receive-pack \
  --base-path="$root" --listen="$listen" --port="$port" "$root"

#!/usr/bin/env bash
# Builds gantry/systemd-host:bookworm, a stand-in for a fleet host in the Ansible rollout test
# (tests/tests/ansible_rollout.rs): gantry/python-kfp:3.11 (Debian 12 with Python, which
# Ansible's modules need) plus systemd as PID 1, from Debian's packages (no registry needed).
# Run it as `docker run -d --tmpfs /run --tmpfs /run/lock -v /sys/fs/cgroup:/sys/fs/cgroup:ro`:
# systemd runs in an unprivileged container that way, hardened units included.
#
# Usage: bash images/systemd-host.sh [--force]
# Idempotent: an image whose label gantry.build-hash matches this script's hash is kept.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
hash=$(sha256sum "$here/systemd-host.sh" | cut -c1-16)
image=gantry/systemd-host:bookworm
base=gantry/python-kfp:3.11
force=0
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    *) echo "usage: $0 [--force]" >&2; exit 2 ;;
  esac
done

exec 9>/tmp/gantry-systemd-host-build.lock
flock 9
if [ "$force" = 0 ] &&
  [ "$(docker image inspect -f '{{index .Config.Labels "gantry.build-hash"}}' "$image" 2>/dev/null)" = "$hash" ]; then
  echo "images: $image is up to date"
  exit 0
fi
docker image inspect "$base" >/dev/null 2>&1 || bash "$here/build.sh"
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cat > "$ctx/Dockerfile" <<DOCKERFILE
FROM $base
RUN apt-get update -q \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \\
      systemd systemd-sysv dbus procps iproute2 \\
 && apt-get clean && rm -rf /var/lib/apt/lists/* \\
 && systemctl mask getty.target console-getty.service systemd-logind.service \\
      systemd-udevd.service systemd-udev-trigger.service systemd-remount-fs.service
LABEL gantry.build-hash=$hash
STOPSIGNAL SIGRTMIN+3
CMD ["/sbin/init"]
DOCKERFILE
echo "images: building $image"
docker build -q -t "$image" "$ctx" >/dev/null
echo "images: built $image"

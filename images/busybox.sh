#!/usr/bin/env bash
# Builds gantry/busybox:latest, a tiny image for the agent's Docker tests, from Debian's static
# busybox (no container registry is needed): a rootfs with /bin/busybox, a symlink per applet
# (sh, echo, cat, sleep, ls, mkdir, printf, test, wc, ...), /tmp, then `docker import`.
#
# Usage: bash images/busybox.sh [--force] [IMAGE]
# Idempotent: an existing image that runs `sh -c 'echo ok'` is kept unless --force is given.
# Uses a static busybox already on the host if there is one; otherwise takes it out of the
# busybox-static package with `apt-get download` (nothing is installed on the host).
# images/build.sh builds the same image among others; both take the same lock.
set -euo pipefail

force=0
image=gantry/busybox:latest
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    -*) echo "usage: $0 [--force] [IMAGE]" >&2; exit 2 ;;
    *) image=$arg ;;
  esac
done

command -v docker >/dev/null || { echo "busybox.sh: docker not found" >&2; exit 1; }

works() { [ "$(docker run --rm --network none "$image" sh -c 'echo ok' 2>/dev/null)" = ok ]; }

if [ "$force" = 0 ] && docker image inspect "$image" >/dev/null 2>&1 && works; then
  echo "busybox.sh: $image is present"
  exit 0
fi

# One image build at a time on a machine (shared with images/build.sh).
exec 9>/tmp/gantry-images-build.lock
flock 9
if [ "$force" = 0 ] && docker image inspect "$image" >/dev/null 2>&1 && works; then
  echo "busybox.sh: $image is present"
  exit 0
fi

work=$(mktemp -d /tmp/gantry-busybox.XXXXXX)
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"
mkdir -p "$root/bin" "$root/tmp" "$root/etc" "$root/root"
chmod 1777 "$root/tmp"

is_static() { file_out=$(LC_ALL=C ldd "$1" 2>&1 || true); case "$file_out" in *"not a dynamic"*|*"statically linked"*) return 0 ;; esac; return 1; }

bb=""
for cand in /bin/busybox /usr/bin/busybox "$(command -v busybox 2>/dev/null || true)"; do
  if [ -n "$cand" ] && [ -x "$cand" ] && is_static "$cand"; then bb=$cand; break; fi
done
if [ -z "$bb" ]; then
  (cd "$work" && { apt-get download busybox-static >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null && apt-get download busybox-static >/dev/null; }; })
  dpkg-deb -x "$work"/busybox-static_*.deb "$work/deb"
  bb="$work/deb/bin/busybox"
fi
cp "$bb" "$root/bin/busybox"
chmod 755 "$root/bin/busybox"
for app in $("$root/bin/busybox" --list); do
  [ "$app" = busybox ] || ln -sf busybox "$root/bin/$app"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"

tar -C "$root" -c . | docker import \
  --change 'ENV PATH=/bin' \
  --change 'CMD ["sh"]' \
  --change 'LABEL org.opencontainers.image.title=gantry-busybox' \
  - "$image" >/dev/null
works || { echo "busybox.sh: $image does not run" >&2; exit 1; }
echo "busybox.sh: built $image"

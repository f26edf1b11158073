#!/usr/bin/env bash
# Builds the Docker images the tests and the README example use, from local parts only
# (Debian packages + PyPI; no container registry is needed):
#
#   gantry/python-kfp:3.11  Debian 12 (debootstrap minbase) + Python 3.11 + kfp==2.16.1, pandas,
#                           scikit-learn, joblib; a wheelhouse (PIP_FIND_LINKS) with the kfp
#                           versions that compiled the conformance corpus and the small packages
#                           its pipelines install; the host's CA bundle. Also tagged python:3.11 (the default base image
#                           of kfp 2.16.1's @dsl.component), python:3.11-slim, python:3.9,
#                           python:3.10 and python:3.12, so compiled lightweight components run.
#   gantry/python-kfp:3.11-kfp2.14.3
#                           the same with kfp 2.14.3 installed instead, the version most of the
#                           conformance corpus's steps pin (the corpus test runs on it).
#   gantry/busybox:latest   a static busybox, for small container components.
#
# Usage: bash images/build.sh [--force]
# Idempotent: an image whose label gantry.build-hash matches this script's hash is kept;
# --force rebuilds. Needs root (debootstrap, chroot, mount) and a Docker engine.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
hash=$(sha256sum "$here/build.sh" | cut -c1-16)
force=0
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    *) echo "usage: $0 [--force]" >&2; exit 2 ;;
  esac
done

KFP_VERSION=2.16.1
# The SDK versions that compiled shared/kfp-conformance (its steps pin them).
CORPUS_KFP_VERSIONS=(2.1.3 2.9.0 2.12.1 2.14.2 2.14.3 2.14.4 2.14.6 2.15.2)
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
IMAGE=gantry/python-kfp:3.11
# The same with the SDK version most of the corpus's steps pin (see "corpus variant" below).
CORPUS_KFP=2.14.3
CORPUS_IMAGE=gantry/python-kfp:3.11-kfp$CORPUS_KFP
BUSYBOX=gantry/busybox:latest
# python:3.11 is kfp 2.16.1's default (kfp/dsl/component_factory.py: _DEFAULT_BASE_IMAGE).
TAGS=(python:3.11 python:3.11-slim python:3.9 python:3.10 python:3.12)

# One build at a time on a machine: a second run waits, then finds the images up to date.
exec 9>/tmp/gantry-images-build.lock
flock 9

t0=$SECONDS
phase_start=$SECONDS
phase() { phase_start=$SECONDS; echo "images: [$((SECONDS - t0))s] $*"; }
done_phase() { echo "images: [$((SECONDS - t0))s]   ... $* ($((SECONDS - phase_start))s)"; }
up_to_date() {
  [ "$force" = 0 ] &&
    [ "$(docker image inspect -f '{{index .Config.Labels "gantry.build-hash"}}' "$1" 2>/dev/null)" = "$hash" ]
}

image_id() { docker image inspect -f '{{.Id}}' "$1" 2>/dev/null || true; }
# Remove the image a rebuild replaced, unless something still uses or names it.
drop_old() {
  [ -n "$2" ] && [ "$2" != "$(image_id "$1")" ] && docker rmi "$2" >/dev/null 2>&1 || true
}

work=$(mktemp -d /tmp/gantry-images.XXXXXX)
rootfs="$work/rootfs"
unmount_all() {
  local m
  for m in dev/pts dev proc sys; do
    if mountpoint -q "$rootfs/$m" 2>/dev/null; then umount "$rootfs/$m" 2>/dev/null || umount -l "$rootfs/$m"; fi
  done
}
cleanup() {
  unmount_all || true
  # Never delete through a mount that is still there.
  local m
  for m in dev/pts dev proc sys; do
    if mountpoint -q "$rootfs/$m" 2>/dev/null; then
      echo "images: $rootfs/$m still mounted; leaving $work in place" >&2
      return
    fi
  done
  rm -rf --one-file-system "$work"
}
trap cleanup EXIT

# ------------------------------------------------------------------------------ busybox
if up_to_date "$BUSYBOX"; then
  echo "images: $BUSYBOX is up to date"
else
  phase "building $BUSYBOX"
  old_id=$(image_id "$BUSYBOX")
  bb="$work/busybox"
  mkdir -p "$bb/bin" "$bb/tmp" "$bb/etc"
  if [ -x /bin/busybox ] && ldd /bin/busybox 2>&1 | grep -q "not a dynamic"; then
    cp /bin/busybox "$bb/bin/busybox"
  else
    # Take the static busybox out of Debian's package without installing it on the host.
    (cd "$work" && { apt-get download busybox-static >/dev/null 2>&1 ||
      { apt-get update -qq >/dev/null && apt-get download busybox-static >/dev/null; }; })
    dpkg-deb -x "$work"/busybox-static_*.deb "$work/bbdeb"
    cp "$work/bbdeb/bin/busybox" "$bb/bin/busybox"
  fi
  for app in $("$bb/bin/busybox" --list); do [ "$app" = busybox ] || ln -sf busybox "$bb/bin/$app"; done
  chmod 1777 "$bb/tmp"
  echo "root:x:0:0:root:/root:/bin/sh" >"$bb/etc/passwd"
  echo "root:x:0:" >"$bb/etc/group"
  tar -C "$bb" -c . | docker import \
    --change 'ENV PATH=/bin' --change "LABEL gantry.build-hash=$hash" --change 'CMD ["sh"]' \
    - "$BUSYBOX" >/dev/null
  drop_old "$BUSYBOX" "$old_id"
  done_phase "imported $BUSYBOX"
fi

# ------------------------------------------------------------------------------ python + kfp
if up_to_date "$IMAGE"; then
  echo "images: $IMAGE is up to date"
else
  if ! command -v debootstrap >/dev/null 2>&1; then
    phase "installing debootstrap on the host"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    done_phase "debootstrap installed"
  fi

  phase "debootstrap --variant=minbase bookworm ($MIRROR)"
  debootstrap --variant=minbase bookworm "$rootfs" "$MIRROR" >"$work/debootstrap.log" 2>&1 ||
    { tail -30 "$work/debootstrap.log" >&2; exit 1; }
  done_phase "debootstrap done"

  # debootstrap made the device nodes in $rootfs/dev; give apt a private pty instance too.
  mount -t proc proc "$rootfs/proc"
  mkdir -p "$rootfs/dev/pts"
  mount -t devpts -o newinstance,ptmxmode=0666 devpts "$rootfs/dev/pts"
  cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
  # The host's CA bundle, so TLS from inside the chroot trusts what the host trusts.
  host_ca=/etc/ssl/certs/ca-certificates.crt
  [ -r "${SSL_CERT_FILE:-}" ] && host_ca=$SSL_CERT_FILE
  cp "$host_ca" "$rootfs/tmp/host-ca.crt"
  # A clean environment inside the chroot (the host's PIP_*/PYTHON* settings do not apply there).
  in_chroot() {
    chroot "$rootfs" /usr/bin/env -i \
      PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
      DEBIAN_FRONTEND=noninteractive SSL_CERT_FILE=/tmp/host-ca.crt REQUESTS_CA_BUNDLE=/tmp/host-ca.crt \
      PIP_CERT=/tmp/host-ca.crt PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore "$@"
  }

  phase "apt-get install python3 python3-pip python3-venv ca-certificates (chroot)"
  in_chroot sh -ec '
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends python3 python3-pip python3-venv ca-certificates >/dev/null
    ln -sf python3 /usr/bin/python'
  done_phase "python $(in_chroot python3 -c 'import platform; print(platform.python_version())') installed"

  phase "pip install kfp==$KFP_VERSION pandas scikit-learn joblib (chroot)"
  in_chroot python3 -m pip install --quiet --no-cache-dir --break-system-packages \
    "kfp==$KFP_VERSION" pandas scikit-learn joblib
  # Like the official python images: not "externally managed", so the `pip install kfp==...`
  # that every compiled KFP lightweight component runs first succeeds (already satisfied).
  rm -f "$rootfs"/usr/lib/python3*/EXTERNALLY-MANAGED
  in_chroot python3 -c 'import kfp, pandas, sklearn, joblib'
  # Every compiled lightweight component first runs `pip install 'kfp==<its SDK version>'
  # --no-deps`. Wheels of the SDK versions that compiled KFP's conformance corpus sit in the
  # image (PIP_FIND_LINKS below), so those steps do not each fetch one.
  mkdir -p "$rootfs/opt/kfp-wheels"
  for v in "${CORPUS_KFP_VERSIONS[@]}"; do
    # `pip wheel` builds the versions published only as source.
    in_chroot python3 -m pip wheel --quiet --no-deps -w /opt/kfp-wheels "kfp==$v"
  done
  # And the small packages corpus pipelines install with `packages_to_install` (with what they
  # pull in), so the corpus runs with no package index at all (PIP_NO_INDEX=1 in its steps).
  # Not pandas 2.2.0 + scikit-learn 1.4.0 (iris): reinstalling them with numpy and scipy in
  # each of its three steps took over 15 minutes on a loaded 2-core machine.
  in_chroot python3 -m pip download --quiet -d /opt/kfp-wheels yapf \
    'ipykernel>=6,<7' 'jupyter_client>=7,<9' 'nbclient>=0.10,<1'
  done_phase "pip packages installed"

  phase "cleaning the rootfs"
  in_chroot sh -ec 'apt-get clean; rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /root/.cache /var/log/*.log \
    /var/log/apt/* /usr/share/doc/* /usr/share/man/* /usr/share/info/*'
  # Steps trust what the host trusts (a site's TLS proxy in front of PyPI, say).
  mv "$rootfs/tmp/host-ca.crt" "$rootfs/etc/ssl/certs/gantry-host-ca.crt"
  : >"$rootfs/etc/resolv.conf"
  unmount_all
  du_mb=$(du -sm --one-file-system "$rootfs" | cut -f1)
  done_phase "rootfs is ${du_mb} MB"

  phase "docker import $IMAGE"
  tar --numeric-owner -C "$rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV PYTHONUNBUFFERED=1' --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PIP_DISABLE_PIP_VERSION_CHECK=1' --change 'ENV PIP_ROOT_USER_ACTION=ignore' \
    --change 'ENV PIP_FIND_LINKS=/opt/kfp-wheels' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/gantry-host-ca.crt' \
    --change 'ENV PIP_CERT=/etc/ssl/certs/gantry-host-ca.crt' \
    --change 'ENV REQUESTS_CA_BUNDLE=/etc/ssl/certs/gantry-host-ca.crt' \
    --change "LABEL gantry.build-hash=$hash" --change "LABEL gantry.kfp-version=$KFP_VERSION" \
    --change 'CMD ["python3"]' \
    - "$IMAGE" >/dev/null
  done_phase "imported $IMAGE"
fi
old_id=$(image_id python:3.11)
for tag in "${TAGS[@]}"; do docker tag "$IMAGE" "$tag"; done
drop_old "$IMAGE" "$old_id"

# ------------------------------------------------------------------------------ corpus variant
# Most of the corpus's lightweight components pin kfp==2.14.3: with it preinstalled their
# `pip install kfp==2.14.3` is already satisfied instead of swapping the SDK in every step. The
# corpus test tags python:3.11 to this image while it runs and back afterwards.
if up_to_date "$CORPUS_IMAGE" &&
  [ "$(docker image inspect -f '{{index .Config.Labels "gantry.base-id"}}' "$CORPUS_IMAGE" 2>/dev/null)" = "$(image_id "$IMAGE")" ]; then
  echo "images: $CORPUS_IMAGE is up to date"
else
  phase "building $CORPUS_IMAGE (kfp==$CORPUS_KFP preinstalled)"
  old_id=$(image_id "$CORPUS_IMAGE")
  tmp_name="gantry-corpus-image-$$"
  docker rm -f "$tmp_name" >/dev/null 2>&1 || true
  docker run --name "$tmp_name" --network none "$IMAGE" \
    python3 -m pip install --quiet --no-index --no-deps "kfp==$CORPUS_KFP" >/dev/null
  docker commit --change "LABEL gantry.kfp-version=$CORPUS_KFP" \
    --change "LABEL gantry.base-id=$(image_id "$IMAGE")" "$tmp_name" "$CORPUS_IMAGE" >/dev/null
  docker rm -f "$tmp_name" >/dev/null
  drop_old "$CORPUS_IMAGE" "$old_id"
  got=$(docker run --rm --network none "$CORPUS_IMAGE" python3 -c 'import kfp; print(kfp.__version__)')
  [ "$got" = "$CORPUS_KFP" ] ||
    { echo "images: expected kfp $CORPUS_KFP in $CORPUS_IMAGE, got '$got'" >&2; exit 1; }
  done_phase "committed $CORPUS_IMAGE"
fi

# ------------------------------------------------------------------------------ verify
phase "verifying (no network)"
got=$(docker run --rm --network none python:3.11-slim \
  python3 -c 'import kfp, pandas, sklearn, joblib; print(kfp.__version__)')
[ "$got" = "$KFP_VERSION" ] || { echo "images: expected kfp $KFP_VERSION in the image, got '$got'" >&2; exit 1; }
[ "$(docker run --rm --network none "$BUSYBOX" sh -c 'echo ok')" = ok ] ||
  { echo "images: $BUSYBOX does not run" >&2; exit 1; }

# A compiled KFP lightweight component, run the way a launcher runs it: compile inside the image
# (same kfp as the host's), then run its exact command + args with --network none.
spec=$(docker run --rm -i --network none "$IMAGE" sh -c 'cat >/tmp/c.py && python3 /tmp/c.py' <<'PY'
import json, tempfile, warnings, yaml
warnings.simplefilter("ignore")
from kfp import compiler, dsl

@dsl.component
def double(x: int, out: dsl.Output[dsl.Artifact]) -> int:
    with open(out.path, "w") as f:
        f.write(str(2 * x))
    return 2 * x

path = tempfile.mktemp(suffix=".yaml")
compiler.Compiler().compile(double, path)
doc = next(yaml.safe_load_all(open(path)))
print(json.dumps(doc["deploymentSpec"]["executors"]["exec-double"]["container"]))
PY
)
vdir="$work/verify"
mkdir -p "$vdir"
chmod 777 "$vdir"
SPEC=$spec VDIR=$vdir python3 - <<'PY'
import json, os, subprocess, sys
spec = json.loads(os.environ["SPEC"])
vdir = os.environ["VDIR"]
executor_input = {
    "inputs": {"parameterValues": {"x": 21}},
    "outputs": {
        "parameters": {"Output": {"outputFile": "/gantry/out/params/Output"}},
        "artifacts": {"out": {"artifacts": [{
            "name": "out", "type": {"schemaTitle": "system.Artifact", "schemaVersion": "0.0.1"},
            "uri": "/gantry/out/artifacts/out", "metadata": {}}]}},
        "outputFile": "/gantry/out/executor_output.json",
    },
}
args = [a.replace("{{$}}", json.dumps(executor_input)) for a in spec["args"]]
cmd = ["docker", "run", "--rm", "--network", "none", "-v", f"{vdir}:/gantry/out",
       spec["image"], *spec["command"], *args]
r = subprocess.run(cmd, capture_output=True, text=True)
if r.returncode != 0:
    sys.exit(f"images: compiled component failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
out = json.load(open(os.path.join(vdir, "executor_output.json")))
assert out["parameterValues"]["Output"] == 42, out
assert open(os.path.join(vdir, "artifacts", "out")).read() == "42"
print(f"images:   compiled lightweight component ran in {spec['image']} with --network none")
PY
done_phase "verified: kfp $got, busybox, compiled component"
echo "images: done in $((SECONDS - t0))s"

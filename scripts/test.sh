#!/usr/bin/env bash
# The one test command (README and CI): bash scripts/test.sh [extra cargo test args]
# On a fresh machine it first installs what the tests use (kfp==2.16.1, kfp-kubernetes and ansible==10.7.0 for the host Python, ansible-lint in a venv,
# s3s-fs), builds the local Docker images if missing (images/build.sh) and, unless
# GANTRY_TEST_S3_ENDPOINT is already set, starts a local S3 server (s3s-fs) for the run.
# The KFP corpus tests run only when GANTRY_KFP_CORPUS names the corpus (.ci/run sets it to
# ../shared/kfp-conformance); without it each prints one line saying it skipped, and passes.
set -euo pipefail
cd "$(dirname "$0")/.."
export RUST_BACKTRACE=1
PATH="$PATH:${CARGO_HOME:-$HOME/.cargo}/bin"

if ! python3 -c 'import sys, kfp; sys.exit(kfp.__version__ != "2.16.1")' 2>/dev/null; then
  PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --quiet 'kfp==2.16.1'
fi
python3 -c 'import kfp.kubernetes' 2>/dev/null ||
  PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --quiet 'kfp-kubernetes==2.16.1'
python3 -c 'import ansible_collections.community.docker' 2>/dev/null ||
  PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --quiet 'ansible==10.7.0'
# ansible-lint in a virtual environment of its own, so its dependencies leave the host's alone.
lint_env=${XDG_CACHE_HOME:-$HOME/.cache}/gantry/ansible-lint-24.12.2
[ -x "$lint_env/bin/ansible-lint" ] || {
  python3 -m venv "$lint_env" &&
    "$lint_env/bin/pip" install --quiet 'ansible-lint==24.12.2' 'ansible-core==2.17.7'
}
export GANTRY_ANSIBLE_LINT="$lint_env/bin/ansible-lint"
command -v s3s-fs >/dev/null 2>&1 || cargo install --locked s3s-fs@0.14.1 --features binary

if command -v docker >/dev/null 2>&1; then
  for image in gantry/python-kfp:3.11 gantry/busybox:latest; do
    docker image inspect "$image" >/dev/null 2>&1 || { bash images/build.sh; break; }
  done
fi

if [ -z "${GANTRY_TEST_S3_ENDPOINT:-}" ] && command -v s3s-fs >/dev/null 2>&1; then
  s3tmp=$(mktemp -d /tmp/gantry-test-s3.XXXXXX)
  trap 'bash scripts/s3-server.sh stop "$s3tmp/data" || true; rm -rf "$s3tmp"' EXIT
  for port in $(seq 9310 9330); do
    bash scripts/s3-server.sh start "$s3tmp/data" "$port" 2>/dev/null && break
    [ "$port" = 9330 ] && { echo "test.sh: could not start s3s-fs" >&2; exit 1; }
  done
  export GANTRY_TEST_S3_ENDPOINT="http://127.0.0.1:$port" GANTRY_TEST_S3_BUCKET=gantry-artifacts
  export GANTRY_TEST_S3_DIR="$s3tmp/data"
  export AWS_ACCESS_KEY_ID=gantry AWS_SECRET_ACCESS_KEY=gantrysecret AWS_REGION=us-east-1
fi

# Run the whole suite (a failing binary does not hide the ones after it), then close with one
# summary line over every test binary.
out=$(mktemp /tmp/gantry-test-out.XXXXXX)
set +e
cargo test --workspace --no-fail-fast "$@" 2>&1 | tee "$out"
status=${PIPESTATUS[0]}
set -e
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$out"
rm -f "$out"
exit "$status"

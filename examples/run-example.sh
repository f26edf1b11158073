#!/usr/bin/env bash
# Quickstart: builds Gantry and the local images, starts `gantry dev`, compiles the training
# example with the real kfp SDK, runs it to completion, shows the run, and stops.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -c 'import kfp' 2>/dev/null || PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --quiet 'kfp==2.16.1'
bash images/build.sh
cargo build --quiet --bin gantry
mkdir -p .gantry
python3 examples/training_pipeline.py .gantry/training.yaml

port=${GANTRY_EXAMPLE_PORT:-7070}
# `gantry dev` sets up TLS and an admin token and writes where they are to this file, which
# the CLI reads (from the default data dir, .gantry/client.toml, it would need no variable).
export GANTRY_CLIENT_CONFIG=.gantry/dev/client.toml
rm -f "$GANTRY_CLIENT_CONFIG"
target/debug/gantry dev --listen "127.0.0.1:$port" --data-dir .gantry/dev 2> .gantry/dev.log &
dev_pid=$!
trap 'kill "$dev_pid" 2>/dev/null; wait "$dev_pid" 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  target/debug/gantry agent list -o json 2>/dev/null | grep -q CONNECTED && break
  kill -0 "$dev_pid" 2>/dev/null || { cat .gantry/dev.log; exit 1; }
  sleep 0.2
done

target/debug/gantry run submit .gantry/training.yaml -p n_estimators=100 -p min_accuracy=0.85 --wait
echo
target/debug/gantry agent list

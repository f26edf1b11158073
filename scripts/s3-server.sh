#!/usr/bin/env bash
# A local S3 server for tests and the example: s3s-fs over a directory (SigV4, multipart, ranges).
#   scripts/s3-server.sh start DIR PORT   serve DIR on 127.0.0.1:PORT; buckets are DIR's
#                                         subdirectories, and bucket gantry-artifacts is created.
#                                         The pid goes to DIR/../s3s.pid, the log to DIR/../s3s.log.
#   scripts/s3-server.sh stop DIR         stop the server started for DIR (that pid only).
# Credentials: access key "gantry", secret key "gantrysecret" (override with S3_ACCESS_KEY /
# S3_SECRET_KEY). Install the server with: cargo install --locked s3s-fs@0.14.1 --features binary
set -euo pipefail

usage() { echo "usage: $0 start DIR PORT | stop DIR" >&2; exit 2; }
[ $# -ge 2 ] || usage
cmd=$1
dir=$(realpath -m "$2")
pidfile="$(dirname "$dir")/s3s.pid"
logfile="$(dirname "$dir")/s3s.log"

case "$cmd" in
start)
  [ $# -eq 3 ] || usage
  port=$3
  PATH="$PATH:${CARGO_HOME:-$HOME/.cargo}/bin"
  command -v s3s-fs >/dev/null || { echo "s3-server: s3s-fs not found on PATH" >&2; exit 1; }
  if [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "s3-server: already running (pid $(cat "$pidfile"))" >&2; exit 1
  fi
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "s3-server: port $port is already in use" >&2; exit 1
  fi
  mkdir -p "$dir/gantry-artifacts"
  s3s-fs --host 127.0.0.1 --port "$port" \
    --access-key "${S3_ACCESS_KEY:-gantry}" --secret-key "${S3_SECRET_KEY:-gantrysecret}" \
    "$dir" >"$logfile" 2>&1 </dev/null &
  pid=$!
  echo "$pid" >"$pidfile"
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "s3-server: s3s-fs pid $pid serving $dir on http://127.0.0.1:$port"
      exit 0
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "s3-server: s3s-fs did not start; its log ($logfile):" >&2
  cat "$logfile" >&2 || true
  kill "$pid" 2>/dev/null || true
  rm -f "$pidfile"
  exit 1
  ;;
stop)
  [ -s "$pidfile" ] || { echo "s3-server: no pid file at $pidfile" >&2; exit 0; }
  pid=$(cat "$pidfile")
  if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = s3s-fs ]; then
    kill "$pid"
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$pidfile"
  ;;
*) usage ;;
esac

#!/usr/bin/env bash
# Arize Phoenix on 127.0.0.1 for the integration test (tests/test_phoenix.py) and for trying the
# openinference projection by hand. Phoenix lives in its own virtualenv (.phoenix-venv) so its
# many dependencies never meet nemoflow's; its state lives in .phoenix/ and is thrown away.
#
#   scripts/phoenix.sh install   create .phoenix-venv and install arize-phoenix into it
#   scripts/phoenix.sh start     install if needed, start Phoenix on a free port, wait until it
#                                answers, print its URL (also written to .phoenix/url)
#   scripts/phoenix.sh stop      stop the Phoenix started by `start`
#   scripts/phoenix.sh url       print the URL of the running Phoenix
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${PHOENIX_VENV:-.phoenix-venv}
STATE=.phoenix
PYTHON=${PYTHON:-python3}
START_TIMEOUT=${PHOENIX_START_TIMEOUT:-120}

install() {
  if [ -x "$VENV/bin/phoenix" ]; then
    return 0
  fi
  local t0=$SECONDS
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check 'arize-phoenix' >&2
  echo "phoenix: installed $("$VENV/bin/python" -c 'import phoenix; print(phoenix.__version__)') in $((SECONDS - t0)) s" >&2
}

free_port() {
  "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

running() {
  [ -f "$STATE/pid" ] && kill -0 "$(cat "$STATE/pid")" 2>/dev/null
}

start() {
  if running; then
    cat "$STATE/url"
    return 0
  fi
  install
  rm -rf "$STATE"
  mkdir -p "$STATE/data"
  local port grpc_port url t0=$SECONDS
  port=$(free_port)
  grpc_port=$(free_port)
  url="http://127.0.0.1:$port"
  # Loopback only, no telemetry, no fonts or scripts fetched from the internet, a private
  # SQLite database in .phoenix/data.
  PHOENIX_HOST=127.0.0.1 PHOENIX_PORT=$port PHOENIX_GRPC_PORT=$grpc_port \
    PHOENIX_WORKING_DIR="$PWD/$STATE/data" PHOENIX_TELEMETRY_ENABLED=false \
    PHOENIX_ALLOW_EXTERNAL_RESOURCES=false PHOENIX_ENABLE_AUTH=false \
    DO_NOT_TRACK=1 OTEL_SDK_DISABLED=true \
    setsid "$VENV/bin/phoenix" serve >"$STATE/phoenix.log" 2>&1 </dev/null &
  echo $! >"$STATE/pid"
  while :; do
    if "$PYTHON" - "$url" <<'PY' 2>/dev/null; then break; fi
import sys, urllib.request
urllib.request.urlopen(sys.argv[1] + "/healthz", timeout=2).read()
PY
    if ! running; then
      echo "phoenix: exited during start; log follows" >&2
      tail -n 40 "$STATE/phoenix.log" >&2
      exit 1
    fi
    if [ $((SECONDS - t0)) -ge "$START_TIMEOUT" ]; then
      echo "phoenix: no answer from $url after $START_TIMEOUT s; log follows" >&2
      tail -n 40 "$STATE/phoenix.log" >&2
      stop
      exit 1
    fi
    sleep 0.5
  done
  echo "$url" >"$STATE/url"
  echo "phoenix: answering at $url after $((SECONDS - t0)) s" >&2
  echo "$url"
}

stop() {
  if [ -f "$STATE/pid" ]; then
    local pid
    pid=$(cat "$STATE/pid")
    # setsid made Phoenix a process-group leader: stop it and its workers together.
    kill -TERM -- "-$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.25
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
    rm -f "$STATE/pid"
  fi
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  url) running && cat "$STATE/url" ;;
  *) echo "usage: $0 install|start|stop|url" >&2; exit 2 ;;
esac

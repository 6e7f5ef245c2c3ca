#!/usr/bin/env bash
# A local Ray head on loopback for `ray job submit` (dev setups; for clusters see deploy/k8s and docker-compose).
#   deploy/ray-local.sh start     start a head (prints the RAY_ADDRESS to submit to)
#   deploy/ray-local.sh stop      stop the head this script started (its own process group only)
#   deploy/ray-local.sh status
# Settings (env): LEAPFROG_RAY_TEMP (/tmp/leapfrog-ray), LEAPFROG_RAY_PORT (6390), LEAPFROG_RAY_DASHBOARD_PORT (8265),
# LEAPFROG_RAY_AGENT_PORT (52365; change it when another Ray runs on this machine),
# LEAPFROG_RAY_CPUS (all cores), LEAPFROG_VENV (.venv of this checkout). Jobs then run with the venv's python:
#   RAY_AUTH_MODE=disabled .venv/bin/ray job submit --address http://127.0.0.1:8265 --working-dir . \
#       -- python -m services.driver deploy/jobs/arith.yaml
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${LEAPFROG_VENV:-$ROOT/.venv}
TEMP=${LEAPFROG_RAY_TEMP:-/tmp/leapfrog-ray}
PORT=${LEAPFROG_RAY_PORT:-6390}
DASHBOARD_PORT=${LEAPFROG_RAY_DASHBOARD_PORT:-8265}
AGENT_PORT=${LEAPFROG_RAY_AGENT_PORT:-52365}   # the job agent's HTTP port (Ray's default; must be free)
CPUS=${LEAPFROG_RAY_CPUS:-$(nproc)}
PIDFILE=$TEMP/leapfrog-head.pgid
export PATH="$VENV/bin:$PATH"                 # jobs' `python` is the venv's
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0    # makes --node-ip-address=127.0.0.1 effective
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}   # loopback only; use token auth on a real cluster
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export RAY_USAGE_STATS_ENABLED=0

case "${1:-}" in
  start)
    if [ -f "$PIDFILE" ] && kill -0 -- "-$(cat "$PIDFILE")" 2>/dev/null; then
      echo "a Leapfrog Ray head is already running (process group $(cat "$PIDFILE")); stop it first" >&2; exit 1
    fi
    mkdir -p "$TEMP"
    setsid "$VENV/bin/ray" start --head --block --node-ip-address=127.0.0.1 --port="$PORT" \
      --dashboard-host=127.0.0.1 --dashboard-port="$DASHBOARD_PORT" --dashboard-agent-listen-port="$AGENT_PORT" \
      --temp-dir="$TEMP" --num-cpus="$CPUS" \
      --disable-usage-stats >"$TEMP/head.log" 2>&1 &
    echo $! >"$PIDFILE"
    for _ in $(seq 1 360); do
      if "$VENV/bin/python" - "$DASHBOARD_PORT" <<'PY' 2>/dev/null; then
import sys, urllib.request
urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/api/version", timeout=1)
PY
        echo "Ray head up. Submit jobs with:"
        echo "  export RAY_ADDRESS=http://127.0.0.1:$DASHBOARD_PORT RAY_AUTH_MODE=$RAY_AUTH_MODE"
        echo "  $VENV/bin/ray job submit --working-dir . -- python -m services.driver deploy/jobs/arith.yaml"
        exit 0
      fi
      if ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
        echo "the Ray head failed to start; see $TEMP/head.log" >&2; tail -20 "$TEMP/head.log" >&2; exit 1
      fi
      sleep 0.5
    done
    echo "the Ray head did not answer on port $DASHBOARD_PORT within 180 s; see $TEMP/head.log (stop it with: $0 stop)" >&2; exit 1
    ;;
  stop)
    if [ ! -f "$PIDFILE" ]; then echo "no Leapfrog Ray head recorded in $TEMP" >&2; exit 0; fi
    PGID=$(cat "$PIDFILE")
    kill -TERM -- "-$PGID" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 -- "-$PGID" 2>/dev/null || break; sleep 0.25; done
    kill -KILL -- "-$PGID" 2>/dev/null || true
    rm -f "$PIDFILE"
    echo "stopped the Ray head (process group $PGID)"
    ;;
  status)
    if [ -f "$PIDFILE" ] && kill -0 -- "-$(cat "$PIDFILE")" 2>/dev/null; then
      echo "running: process group $(cat "$PIDFILE"), dashboard http://127.0.0.1:$DASHBOARD_PORT"
    else
      echo "not running"; exit 3
    fi
    ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac

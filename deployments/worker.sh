#!/usr/bin/env bash
# Deploy winnow's flows to a local Prefect server and start a process worker that runs them.
#   deployments/worker.sh            # server (if needed) + pool + deploy + worker, in the foreground
#   WINNOW_NO_SERVER=1 deployments/worker.sh   # use PREFECT_API_URL's server instead
#   WINNOW_STORE=/data/winnow WINNOW_PROFILE=smoke deployments/worker.sh   # the nightly's store and profile
# Everything listens on 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."
export WINNOW_REPO="$PWD"
BIN="${VENV:-.venv}/bin"
export PREFECT_API_URL="${PREFECT_API_URL:-http://127.0.0.1:4200/api}"
export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1
# Links Prefect prints (this worker's log, `prefect deployment run`) open the V2 UI.
export PREFECT_UI_URL="${PREFECT_UI_URL:-${PREFECT_API_URL%/api}/v2}"
# Read by deployments/prefect.yaml at deploy time: the scheduled nightly run's parameters.
export WINNOW_STORE="${WINNOW_STORE:-$PWD/.winnow}" WINNOW_PROFILE="${WINNOW_PROFILE:-}"

if [ -z "${WINNOW_NO_SERVER:-}" ] && ! curl -sf "$PREFECT_API_URL/health" >/dev/null; then
  mkdir -p .winnow
  nohup "$BIN/prefect" server start --host 127.0.0.1 --port 4200 > .winnow/prefect-server.log 2>&1 &
  echo "started prefect server (log: .winnow/prefect-server.log)"
  for _ in $(seq 60); do curl -sf "$PREFECT_API_URL/health" >/dev/null && break; sleep 1; done
fi
"$BIN/prefect" work-pool inspect winnow-local >/dev/null 2>&1 || "$BIN/prefect" work-pool create winnow-local --type process
"$BIN/prefect" --no-prompt deploy --all --prefect-file deployments/prefect.yaml
exec "$BIN/prefect" worker start --pool winnow-local --limit 1

#!/usr/bin/env bash
# One command, on a fresh Debian machine: a local JetStream server, the aggregator, and a
# simulated fleet of nodes feeding it; the aggregator logs every snapshot it publishes, and
# `stats` prints one a few seconds in. Ctrl-C stops all three. State lives in ./data/.
set -euo pipefail
cd "$(dirname "$0")/.."

export PATH="$PATH:/usr/sbin:/usr/local/sbin"
if ! command -v nats-server >/dev/null 2>&1; then
  echo "quickstart: installing nats-server (Debian package)"
  sudo_cmd=""
  if [ "$(id -u)" -ne 0 ]; then sudo_cmd="sudo"; fi
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq nats-server >/dev/null
fi

port="${QUICKSTART_PORT:-4222}"
export NATS_URL="nats://127.0.0.1:${port}"
export DB_PATH="${DB_PATH:-./data/aggregator.redb}"
export PUBLISH_INTERVAL="${PUBLISH_INTERVAL:-5000}"
export HTTP_ADDR="${HTTP_ADDR:-127.0.0.1:8480}"
mkdir -p data
bin="${CARGO_TARGET_DIR:-target}/release"

echo "quickstart: building (release)"
cargo build --release --quiet --bin truebit-federation -p truebit-federation
cargo build --release --quiet --bin simulate -p truebit-testkit

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

nats-server -js -a 127.0.0.1 -p "$port" -sd ./data/nats > ./data/nats-server.log 2>&1 &
pids+=($!)
for _ in $(seq 50); do
  grep -q "Server is ready" ./data/nats-server.log 2>/dev/null && break
  sleep 0.1
done
grep -q "Server is ready" ./data/nats-server.log || { echo "quickstart: nats-server did not start:"; cat ./data/nats-server.log; exit 3; }
echo "quickstart: JetStream on $NATS_URL (log: data/nats-server.log)"

"$bin"/truebit-federation init
"$bin"/simulate --nodes 25 --tasks-per-second 20 --seconds 3600 &
pids+=($!)
"$bin"/truebit-federation serve &
pids+=($!)

sleep 8
echo
echo "quickstart: what a node reads (truebit-federation stats):"
"$bin"/truebit-federation stats || true
echo
echo "quickstart: the dashboard:  http://${HTTP_ADDR}/   (metrics: http://${HTTP_ADDR}/metrics)"
echo "quickstart: serving; snapshots are logged every $((PUBLISH_INTERVAL / 1000)) s. Ctrl-C to stop."
wait "${pids[-1]}"

#!/usr/bin/env bash
# Start or stop a throwaway three-master Redis Cluster on loopback ports.
#
#   scripts/redis_cluster.sh start DIR [BASE_PORT]   # ports BASE_PORT..BASE_PORT+2 (default 7100)
#   scripts/redis_cluster.sh stop DIR
#
# Each node gets DIR/<port>/ (nodes.conf, AOF with appendfsync everysec, log, pid) and runs
# daemonized; `start` returns once every node reports cluster_state:ok and prints the
# seed URL (redis+cluster://127.0.0.1:BASE_PORT/0, what SKIPREC_REDIS_URL takes).
# `stop` sends SHUTDOWN NOSAVE to each node recorded in DIR and waits for it to exit.
# Needs redis-server and redis-cli (Debian: apt-get install redis-server).
set -euo pipefail

usage() { echo "usage: $0 start DIR [BASE_PORT] | stop DIR" >&2; exit 2; }
[[ $# -ge 2 ]] || usage
action=$1
dir=$(mkdir -p "$2" && cd "$2" && pwd)
base=${3:-7100}
host=127.0.0.1

start() {
  local nodes=()
  for offset in 0 1 2; do
    local port=$((base + offset))
    mkdir -p "$dir/$port"
    redis-server --port "$port" --bind "$host" --dir "$dir/$port" \
      --cluster-enabled yes --cluster-config-file nodes.conf \
      --cluster-node-timeout 5000 --appendonly yes --appendfsync everysec \
      --save "" --daemonize yes --pidfile "$dir/$port/redis.pid" \
      --logfile "$dir/$port/redis.log"
    echo "$port" >>"$dir/ports"
    nodes+=("$host:$port")
  done
  for node in "${nodes[@]}"; do
    for _ in $(seq 100); do
      redis-cli -h "$host" -p "${node##*:}" ping >/dev/null 2>&1 && break
      sleep 0.05
    done
  done
  redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >"$dir/create.log"
  for node in "${nodes[@]}"; do
    for _ in $(seq 200); do
      redis-cli -h "$host" -p "${node##*:}" cluster info 2>/dev/null \
        | grep -q '^cluster_state:ok' && break
      sleep 0.05
    done
    redis-cli -h "$host" -p "${node##*:}" cluster info | grep -q '^cluster_state:ok' \
      || { echo "node $node: cluster not ok" >&2; exit 1; }
  done
  echo "redis+cluster://$host:$base/0"
}

stop() {
  [[ -f "$dir/ports" ]] || return 0
  while read -r port; do
    local pidfile="$dir/$port/redis.pid"
    local pid=""
    [[ -f "$pidfile" ]] && pid=$(cat "$pidfile")
    redis-cli -h "$host" -p "$port" shutdown nosave >/dev/null 2>&1 || true
    if [[ -n "$pid" ]]; then
      for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    fi
  done <"$dir/ports"
  rm -f "$dir/ports"
}

case "$action" in
  start) start ;;
  stop) stop ;;
  *) usage ;;
esac

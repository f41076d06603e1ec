#!/usr/bin/env bash
# The reward server on Ray Serve in one container (docker-compose.ray.yml): a Ray head
# node, then the Serve application of $DDPO_RAY_CONFIG, kept up until SIGTERM.
#   DDPO_RAY_CONFIG      Serve config (default /app/deploy/ray-serve.yaml)
#   DDPO_RAY_MIN_NODES   wait for this many nodes (head included) before deploying, so
#                        replicas spread over the workers that join (default 1)
#   DDPO_RAY_START_ARGS  more `ray start` options (--num-cpus, --object-store-memory, ...)
# Other nodes join with `ray start --address=<this host>:6379 --block` (the ray-worker
# service). The API key (DDPO_API_KEYS) reaches every replica through this environment.
set -euo pipefail

config=${DDPO_RAY_CONFIG:-/app/deploy/ray-serve.yaml}
min_nodes=${DDPO_RAY_MIN_NODES:-1}
log() { printf '[ray-head] %s\n' "$*" >&2; }

stop() {
    log "stopping: Serve first (replicas finish their requests), then Ray"
    serve shutdown --yes >/dev/null 2>&1 || true
    ray stop >/dev/null 2>&1 || true
    exit 0
}
trap stop TERM INT

# shellcheck disable=SC2086  # DDPO_RAY_START_ARGS is a list of options
ray start --head --port=6379 --dashboard-host=0.0.0.0 --disable-usage-stats \
    ${DDPO_RAY_START_ARGS:-}

log "waiting for $min_nodes node(s)"
python3 - "$min_nodes" <<'PY'
import sys, time
import ray
ray.init(address="auto", logging_level="ERROR")
while sum(n["Alive"] for n in ray.nodes()) < int(sys.argv[1]):
    time.sleep(1)
PY

log "deploying $config"
serve deploy "$config"

# Stay up while the head's control store runs (no procps in slim images: /proc directly);
# `wait` returns at once on SIGTERM.
while grep -qx gcs_server /proc/[0-9]*/comm 2>/dev/null; do
    sleep 5 &
    wait $! || true
done
log "Ray's head processes ended"
exit 1

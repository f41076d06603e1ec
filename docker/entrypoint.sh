#!/bin/sh
# Entrypoint of both images. A host directory bind-mounted over /outputs (or /data) that
# belongs to another uid makes the first checkpoint or rating fail deep into a run; check
# up front and say how to fix it, then hand the process over to the command (exec, so it
# gets SIGTERM from `docker stop` directly).
set -eu

for dir in ${DDPO_WRITABLE_DIRS:-}; do
    mkdir -p "$dir" 2>/dev/null || true
    if [ ! -w "$dir" ]; then
        echo "error: $dir is not writable by uid $(id -u) gid $(id -g)." >&2
        echo "  fix: chown $(id -u):$(id -g) the host directory mounted there, or rebuild the" >&2
        echo "  image with --build-arg APP_UID=\$(id -u) --build-arg APP_GID=\$(id -g)." >&2
        exit 1
    fi
done

exec "$@"

#!/usr/bin/env bash
# Prepare a Debian 12 machine *without* Docker Hub access to build and run the stack:
# the project's own CI/dev machines. A normal Docker host needs none of this.
#
#   sudo docker/prepare_host.sh        # idempotent: each step is skipped when done
#
# 1. Docker engine: Debian's docker.io (dockerd 20.10), started in the background when
#    no daemon answers (these machines have no systemd).
# 2. Compose v2: Debian 12 ships only docker-compose 1.29, which rejects our file
#    (`name`, `depends_on.required`). Debian 13's docker-compose package (2.x) needs only
#    libc6 >= 2.34; its .deb is fetched with apt pointed at trixie through a private
#    sources list and state directory (the system's apt sources are untouched), and its
#    binary goes into Docker's CLI plugin folder.
# 3. Local base images (no registry is reachable, so no python:*, pytorch/pytorch or
#    postgres image): Debian 12 minbase by debootstrap with python3, pip and
#    ca-certificates, the CA bundle $PIP_CERT names (the proxy's CA) as the system
#    bundle so pip in the builds reaches PyPI; the same with the torch CPU wheel from
#    $PIP_FIND_LINKS ($DDPO_LOCAL_BASE, the CPU images' base); and PostgreSQL 15 for the
#    `human` profile (docker/local-postgres/).
set -euo pipefail

BASE_IMAGE=${DDPO_LOCAL_BASE:-ddpo-local/debian-torch:2.13.0-cpu}
PLAIN_IMAGE=ddpo-local/debian:bookworm
POSTGRES_IMAGE=ddpo-local/postgres:15
TORCH_VERSION=${DDPO_TORCH_VERSION:-2.13.0}
PLUGIN_DIR=/usr/local/lib/docker/cli-plugins
COMPOSE_MIN=2.24.4
STATE=${DDPO_PREPARE_STATE:-/var/cache/ddpo-prepare}
log() { printf '[prepare] %s\n' "$*" >&2; }

[ "$(id -u)" = 0 ] || { log "run as root"; exit 1; }
mkdir -p "$STATE"

# -- 1. engine ------------------------------------------------------------------
if ! command -v dockerd >/dev/null; then
    log "installing docker.io and debootstrap"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        docker.io debootstrap >/dev/null
fi
command -v debootstrap >/dev/null \
    || DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null
if ! docker info >/dev/null 2>&1; then
    log "starting dockerd (log: /var/log/dockerd.log)"
    nohup dockerd >/var/log/dockerd.log 2>&1 &
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || { log "dockerd did not start; see /var/log/dockerd.log"; exit 1; }
fi

# -- 2. Compose v2 ----------------------------------------------------------------
compose_ok() {
    local v
    v=$(docker compose version --short 2>/dev/null) || return 1
    [ "$(printf '%s\n%s\n' "$COMPOSE_MIN" "${v#v}" | sort -V | head -1)" = "$COMPOSE_MIN" ]
}
if ! compose_ok; then
    log "installing Compose v2 from Debian 13's docker-compose package"
    apt_dir=$STATE/trixie-apt
    mkdir -p "$apt_dir"/{lists/partial,archives/partial,etc}
    echo "deb http://deb.debian.org/debian trixie main" >"$apt_dir/etc/sources.list"
    apt_opts=(-o "Dir::Etc::SourceList=$apt_dir/etc/sources.list"
        -o "Dir::Etc::SourceParts=/nonexistent" -o "Dir::State::Lists=$apt_dir/lists"
        -o "Dir::Cache::Archives=$apt_dir/archives" -o "Dir::State::Status=/dev/null"
        -o "Debug::NoLocking=1")
    apt-get "${apt_opts[@]}" update -q >/dev/null
    (cd "$apt_dir/archives" && chown _apt "$apt_dir/archives" 2>/dev/null; apt-get "${apt_opts[@]}" download docker-compose >/dev/null)
    deb=$(ls -t "$apt_dir"/archives/docker-compose_*.deb | head -1)
    rm -rf "$apt_dir/x" && dpkg-deb -x "$deb" "$apt_dir/x"
    mkdir -p "$PLUGIN_DIR"
    install -m 0755 "$apt_dir/x/usr/libexec/docker/cli-plugins/docker-compose" \
        "$PLUGIN_DIR/docker-compose"
    compose_ok || { log "docker compose still missing or older than $COMPOSE_MIN"; exit 1; }
fi
log "$(docker compose version)"

# -- 3. local base images ---------------------------------------------------------------
root=$STATE/rootfs
if ! docker image inspect "$PLAIN_IMAGE" >/dev/null 2>&1 \
    || ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    if [ ! -x "$root/usr/bin/python3" ]; then
        log "debootstrap Debian 12 minbase into $root (a few minutes)"
        rm -rf "$root"
        debootstrap --variant=minbase \
            --include=python3,python3-venv,python3-pip,ca-certificates bookworm "$root" \
            http://deb.debian.org/debian >"$STATE/debootstrap.log" 2>&1
    fi
    cp "${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}" "$root/etc/ssl/certs/ca-certificates.crt"
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
fi
import_rootfs() { # NAME [tar options]: the rootfs as an image
    local name=$1
    shift
    tar -C "$root" "$@" -c . | docker import \
        -c 'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        -c 'CMD ["/bin/bash"]' - "$name" >/dev/null
}
# 3a. Plain Debian 12 (python3, pip, CA), without anything pip put under /usr/local.
if ! docker image inspect "$PLAIN_IMAGE" >/dev/null 2>&1; then
    log "importing $PLAIN_IMAGE"
    import_rootfs "$PLAIN_IMAGE" --exclude=./usr/local/lib/python3.11 --exclude='./usr/local/bin/*'
fi
# 3b. The same with torch (CPU) and its dependencies: the CPU images' BASE_IMAGE.
if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    wheel=$(ls "${PIP_FIND_LINKS:-/opt/wheels}"/torch-"$TORCH_VERSION"+cpu-cp311-*.whl | head -1)
    log "installing $(basename "$wheel") and its dependencies (PyPI) into the base"
    cp "$wheel" "$root/tmp/"
    chroot "$root" env -i PATH=/usr/bin:/bin HOME=/root python3 -m pip install -q \
        --no-cache-dir --break-system-packages --root-user-action=ignore \
        "/tmp/$(basename "$wheel")"
    rm -f "$root"/tmp/*.whl
    log "importing $BASE_IMAGE"
    import_rootfs "$BASE_IMAGE"
fi
# 3c. PostgreSQL for the `human` profile (DDPO_POSTGRES_IMAGE), built on 3a.
if ! docker image inspect "$POSTGRES_IMAGE" >/dev/null 2>&1; then
    log "building $POSTGRES_IMAGE"
    DOCKER_BUILDKIT=0 docker build -q --build-arg BASE_IMAGE="$PLAIN_IMAGE" \
        -t "$POSTGRES_IMAGE" "$(dirname "$0")/local-postgres" >/dev/null
fi
log "ready: $BASE_IMAGE, $PLAIN_IMAGE, $POSTGRES_IMAGE"

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
# 3. A local base image, $DDPO_LOCAL_BASE (no registry is reachable, so no python:* or
#    pytorch/pytorch image): Debian 12 minbase by debootstrap with python3, pip and
#    ca-certificates, the torch CPU wheel from $PIP_FIND_LINKS installed, and the CA
#    bundle $PIP_CERT names (the proxy's CA) installed as the system bundle, so pip in the
#    build reaches PyPI.
set -euo pipefail

BASE_IMAGE=${DDPO_LOCAL_BASE:-ddpo-local/debian-torch:2.13.0-cpu}
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

# -- 3. local base image --------------------------------------------------------------
if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    wheel=$(ls "${PIP_FIND_LINKS:-/opt/wheels}"/torch-"$TORCH_VERSION"+cpu-cp311-*.whl | head -1)
    cert=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
    root=$STATE/rootfs
    if [ ! -x "$root/usr/bin/python3" ]; then
        log "debootstrap Debian 12 minbase into $root (a few minutes)"
        rm -rf "$root"
        debootstrap --variant=minbase \
            --include=python3,python3-venv,python3-pip,ca-certificates bookworm "$root" \
            http://deb.debian.org/debian >"$STATE/debootstrap.log" 2>&1
    fi
    log "installing $(basename "$wheel") and its dependencies (PyPI) into the base"
    cp "$wheel" "$root/tmp/"
    cp "$cert" "$root/etc/ssl/certs/ca-certificates.crt"
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    chroot "$root" env -i PATH=/usr/bin:/bin HOME=/root python3 -m pip install -q \
        --no-cache-dir --break-system-packages --root-user-action=ignore \
        "/tmp/$(basename "$wheel")"
    rm -f "$root"/tmp/*.whl
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    log "importing $BASE_IMAGE"
    tar -C "$root" -c . | docker import \
        -c 'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        -c 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
fi
log "ready: base image $BASE_IMAGE"

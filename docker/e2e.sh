#!/usr/bin/env bash
# The Docker end-to-end tests (tests/test_compose_e2e*.py: the CPU stack, its `human`
# profile, the Ray Serve file) plus the lock check against
# PyPI: builds both images, runs the CPU stack through restarts, stop/--resume and
# `down -v`. Not part of .ci/run: a cold build alone takes longer than CI's whole
# budget allows on 2 cores (figures in docs/deploy.md). Needs Docker with Compose v2;
# on this project's registry-less machines run docker/prepare_host.sh first.
#   docker/e2e.sh [pytest options]
set -euo pipefail
cd "$(dirname "$0")/.."
# The classic builder: BuildKit on an engine without registry access cannot fetch
# anything it needs beyond the build itself; override with DOCKER_BUILDKIT=1.
export DOCKER_BUILDKIT=${DOCKER_BUILDKIT:-0} COMPOSE_DOCKER_CLI_BUILD=${COMPOSE_DOCKER_CLI_BUILD:-0}
export DDPO_DOCKER_E2E=1 DDPO_LOCK_CHECK=${DDPO_LOCK_CHECK:-1}
exec python -m pytest -q -rs -s tests/test_compose_e2e.py tests/test_compose_e2e_human.py \
    tests/test_compose_e2e_ray.py \
    tests/test_deploy_cpu.py "$@"

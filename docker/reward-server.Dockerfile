# The DDPO reward server: FastAPI + uvicorn, scorers on the GPU. Only the `server` extra:
# no diffusers, peft or accelerate.
#   docker build -f docker/reward-server.Dockerfile -t ddpo-reward-server .
# torch and CUDA come from the base image (see BASE_IMAGE below); everything else is pinned in
# docker/requirements-server.txt (regenerate: python docker/lock_requirements.py).
ARG BASE_IMAGE=pytorch/pytorch:2.13.0-cuda12.6-cudnn9-runtime
FROM ${BASE_IMAGE}

# Another base (any Python 3.11-3.13 image with pip, bash and useradd) works as well:
# docker-compose.cpu.yml builds on python:3.11-slim-bookworm. If that base has no torch,
# it is installed from TORCH_INDEX_URL (e.g. https://download.pytorch.org/whl/cpu).
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=

ARG APP_UID=1000
ARG APP_GID=1000

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# The server binds 0.0.0.0 only with an API key (DDPO_API_KEYS); without one it falls
# back to loopback, unreachable from other containers. Weights: the HF cache volume,
# filled on first start when DDPO_ALLOW_DOWNLOAD=1 (or pre-filled, then offline).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    HOME=/home/app \
    HF_HOME=/home/app/.cache/huggingface \
    DDPO_HOST=0.0.0.0 \
    DDPO_PORT=8000 \
    DDPO_MODELS_DIR=/app/models \
    DDPO_DATA_DIR=/data \
    DDPO_LOG_FORMAT=json \
    DDPO_WRITABLE_DIRS=/data

COPY docker/install_torch.sh /tmp/install_torch.sh
RUN sh /tmp/install_torch.sh "${TORCH_VERSION}" "${TORCH_INDEX_URL}" && rm /tmp/install_torch.sh

# Third-party packages first: this layer is rebuilt only when the lock changes.
COPY docker/requirements-server.txt /tmp/requirements.txt
RUN python3 -m pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# Ray Serve (docker-compose.ray.yml builds with WITH_RAY=1): the packages its lock adds
# to the server's (that lock is resolved within this one, so nothing above moves).
ARG WITH_RAY=0
COPY docker/requirements-ray.txt /tmp/requirements-ray.txt
RUN if [ "${WITH_RAY}" = 1 ]; then \
        python3 -m pip install --no-cache-dir -r /tmp/requirements-ray.txt; \
    fi && rm /tmp/requirements-ray.txt

COPY pyproject.toml README.md /tmp/src/
COPY shared /tmp/src/shared
COPY trainer /tmp/src/trainer
COPY reward_server /tmp/src/reward_server
COPY ddpo /tmp/src/ddpo
RUN python3 -m pip install --no-cache-dir --no-deps --no-build-isolation /tmp/src \
    && rm -rf /tmp/src

RUN groupadd --non-unique --gid "${APP_GID}" app \
    && useradd --non-unique --uid "${APP_UID}" --gid app --create-home \
        --home-dir /home/app --shell /bin/bash app \
    && mkdir -p /home/app/.cache/huggingface /data /app \
    && chown -R app:app /home/app /data

# Small committed weights (the embedded prompt-fidelity scorer).
COPY models /app/models
COPY deploy /app/deploy
COPY docker/entrypoint.sh /usr/local/bin/ddpo-entrypoint
COPY docker/ray-head.sh /usr/local/bin/ddpo-ray-head

USER ${APP_UID}:${APP_GID}
WORKDIR /app
VOLUME ["/home/app/.cache/huggingface", "/data"]
EXPOSE 8000

# Ready = scorers loaded; the start period covers a first-run weight download.
HEALTHCHECK --interval=15s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('DDPO_PORT', '8000'), timeout=4)"]

ENTRYPOINT ["ddpo-entrypoint"]
CMD ["python3", "-m", "reward_server"]

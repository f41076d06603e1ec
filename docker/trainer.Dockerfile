# The DDPO trainer: samples with diffusers, scores over HTTP, updates with PPO.
#   docker build -f docker/trainer.Dockerfile -t ddpo-trainer .
# torch and CUDA come from the base image (see BASE_IMAGE below); everything else is pinned in
# docker/requirements-trainer.txt (regenerate: python docker/lock_requirements.py).
ARG BASE_IMAGE=pytorch/pytorch:2.13.0-cuda12.6-cudnn9-runtime
FROM ${BASE_IMAGE}

# Another base (any Python 3.11-3.13 image with pip, bash and useradd) works as well:
# docker-compose.cpu.yml builds on python:3.11-slim-bookworm. If that base has no torch,
# it is installed from TORCH_INDEX_URL (e.g. https://download.pytorch.org/whl/cpu).
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=

# Match your host user so bind-mounted outputs stay yours: --build-arg APP_UID=$(id -u).
ARG APP_UID=1000
ARG APP_GID=1000

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# PIP_BREAK_SYSTEM_PACKAGES: the base installs torch into its system Python (PEP 668);
# the image is single-purpose, so our packages go beside it rather than into a venv.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    HOME=/home/app \
    HF_HOME=/home/app/.cache/huggingface \
    DDPO_WRITABLE_DIRS=/outputs

COPY docker/install_torch.sh /tmp/install_torch.sh
RUN sh /tmp/install_torch.sh "${TORCH_VERSION}" "${TORCH_INDEX_URL}" && rm /tmp/install_torch.sh

# Third-party packages first: this layer is rebuilt only when the lock changes.
COPY docker/requirements-trainer.txt /tmp/requirements.txt
RUN python3 -m pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

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
    && mkdir -p /home/app/.cache/huggingface /outputs /workspace \
    && chown -R app:app /home/app /outputs /workspace

COPY configs /configs
# The built-in tiny model, for the CPU stack (docker-compose.cpu.yml).
COPY models/tiny-sd /app/models/tiny-sd
COPY docker/entrypoint.sh /usr/local/bin/ddpo-entrypoint

USER ${APP_UID}:${APP_GID}
WORKDIR /workspace
VOLUME ["/home/app/.cache/huggingface"]

ENTRYPOINT ["ddpo-entrypoint"]
CMD ["ddpo", "train", "--config", "/configs/sd15-aesthetic-lora.toml", "--set", "output_dir=/outputs/sd15-aesthetic-lora"]

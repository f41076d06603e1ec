#!/usr/bin/env bash
# Create benchmarks/.venv-trl: trl 0.19.1 (the last release with DDPOTrainer) on a CPU torch,
# for benchmarks/trl_ddpo_epoch.py and benchmarks/compare_trl.py.
#
# torch goes in first, from a CPU wheel (a local file, or PyTorch's CPU index), and is pinned
# again in the second step, so pip never swaps in a CUDA build from PyPI.
#
# The other pins are versions trl 0.19.1 works with, found by trying:
#   - transformers: left unpinned, pip takes 5.x (5.24.0 tried), and importing DDPOTrainer
#     fails: "cannot import name 'HybridCache' from 'transformers'". 4.53.2 (July 2025,
#     trl 0.19.1's month) works.
#   - diffusers 0.34.0, peft 0.16.0, accelerate 1.9.0, datasets 4.0.0: same period; trl's
#     DDPOTrainer and DefaultDDPOStableDiffusionPipeline (LoRA via unet.add_adapter) train
#     on them (benchmarks/trl_ddpo_epoch.py).
#   - huggingface_hub < 1.0: what transformers 4.53.2 itself requires (0.36.2 gets installed).
#
# Usage: bash benchmarks/setup_trl_venv.sh [PYTHON]   (PYTHON: a 3.10-3.12 interpreter)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv-trl"
python="${1:-python3}"
torch_version="2.13.0"

"$python" -m venv "$venv"
pip=("$venv/bin/pip" install --disable-pip-version-check)

# 1. torch, CPU build: a wheel on disk if there is one, else PyTorch's CPU-only index.
wheel="$(ls /opt/wheels/torch-${torch_version}+cpu-*.whl 2>/dev/null | head -n 1 || true)"
if [[ -n "$wheel" ]]; then
  "${pip[@]}" "$wheel"
else
  "${pip[@]}" "torch==${torch_version}" --index-url https://download.pytorch.org/whl/cpu
fi

# 2. trl and the versions it works with; torch pinned so it is not replaced.
"${pip[@]}" \
  "torch==${torch_version}" \
  "trl==0.19.1" \
  "transformers==4.53.2" \
  "diffusers==0.34.0" \
  "peft==0.16.0" \
  "accelerate==1.9.0" \
  "datasets==4.0.0" \
  "huggingface_hub<1.0"

# 3. Check: the CPU torch is the one installed, and DDPOTrainer imports.
"$venv/bin/python" - <<'EOF'
import importlib.metadata as m

import torch
from trl import DDPOConfig, DDPOTrainer, DefaultDDPOStableDiffusionPipeline  # noqa: F401

assert "+cpu" in torch.__version__ or not torch.version.cuda, torch.__version__
for name in ("trl", "torch", "diffusers", "transformers", "peft", "accelerate", "huggingface_hub"):
    print(f"{name}=={m.version(name)}")
EOF
echo "ready: $venv"

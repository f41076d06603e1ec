"""Per-epoch records: metrics.jsonl for scripts, TensorBoard for people."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


class RunLog:
    """Writes on the main process only; on resume, drops records of epochs to be re-run."""

    def __init__(self, output_dir: Path, enabled: bool = True, start_epoch: int = 0) -> None:
        self.enabled = enabled
        self.path = Path(output_dir) / "metrics.jsonl"
        self._writer = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept: list[str] = []
        if self.path.exists() and start_epoch > 0:
            for line in self.path.read_text().splitlines():
                if line.strip() and json.loads(line)["epoch"] < start_epoch:
                    kept.append(line)
        self.path.write_text("".join(line + "\n" for line in kept))
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(Path(output_dir) / "tensorboard"))
        except ImportError:  # tensorboard is optional at run time
            self._writer = None

    def write_epoch(
        self,
        record: dict[str, Any],
        images: np.ndarray | None = None,
        prompts: list[str] | None = None,
    ) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self._writer is None:
            return
        epoch = int(record["epoch"])
        for key, value in record.items():
            if key != "epoch" and isinstance(value, int | float):
                self._writer.add_scalar(key, value, epoch)
        if images is not None and len(images):
            self._writer.add_images("samples", images[:16], epoch, dataformats="NHWC")
            if prompts:
                self._writer.add_text("prompts", "\n\n".join(prompts[:16]), epoch)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def read_metrics(output_dir: Path) -> list[dict[str, Any]]:
    path = Path(output_dir) / "metrics.jsonl"
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]

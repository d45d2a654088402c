"""Monitoring: TensorBoard scalars, histograms and figures, plus a JSON-lines metrics file.

Only the main process writes. ``metrics.jsonl`` holds one line per outer step; on resume it is
cut back to the checkpoint's step (and TensorBoard purges later events) so the logs of a resumed
run read as one uninterrupted run. The TensorBoard events file is opened on the first write, so a
run that logs nothing (resumed at its last step) adds no empty events file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import Tensor
from torch.utils.tensorboard import SummaryWriter

from .plots import loss_figure


class RunLogger:
    """TensorBoard + metrics.jsonl for one run directory."""

    def __init__(self, run_dir: Path, enabled: bool, resume_step: int | None = None) -> None:
        self.enabled = enabled
        self.metrics_path = run_dir / "metrics.jsonl"
        self._tb_dir, self._purge_step = run_dir / "tb", None if resume_step is None else resume_step + 1
        self._writer: SummaryWriter | None = None
        if not enabled:
            return
        if resume_step is not None and self.metrics_path.is_file():
            kept = [ln for ln in self.metrics_path.read_text().splitlines() if ln and json.loads(ln)["step"] <= resume_step]
            self.metrics_path.write_text("".join(ln + "\n" for ln in kept))
        elif resume_step is None and self.metrics_path.is_file():
            self.metrics_path.unlink()

    @property
    def writer(self) -> SummaryWriter:
        """The TensorBoard writer, created (and later events purged, on resume) at the first write."""
        if self._writer is None:
            self._writer = SummaryWriter(str(self._tb_dir), purge_step=self._purge_step)
        return self._writer

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Write scalars to TensorBoard and one JSON line."""
        if not self.enabled:
            return
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)
        with open(self.metrics_path, "a") as fh:
            fh.write(json.dumps({"step": step, **values}) + "\n")

    def histogram(self, step: int, name: str, values: Tensor) -> None:
        if self.enabled and values is not None and values.numel():
            self.writer.add_histogram(name, values.float().clamp(1e-12).log10(), step)

    def curves(self, step: int, name: str, curves: dict[str, list[float]], title: str) -> None:
        """A loss-curve figure (log y) of several optimizers on one task."""
        if not self.enabled:
            return
        self.writer.add_figure(name, loss_figure(curves, title), step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The metrics.jsonl lines of a run as dicts."""
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln]

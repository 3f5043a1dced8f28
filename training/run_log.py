"""Run logs: ``metrics.csv`` (one row per epoch), ``steps.csv`` (training loss every few steps) and TensorBoard.

Only the main process writes; every other process gets a disabled log whose methods do nothing.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["RunLog", "read_csv"]


class RunLog:
    """Writes the epoch table, the step table and TensorBoard scalars of one run folder.

    Args:
        run_dir: The run folder.
        tensorboard: Also write TensorBoard event files under ``run_dir/tensorboard``.
        enabled: False on non-main processes: nothing is written.
    """

    def __init__(self, run_dir: Path, tensorboard: bool = True, enabled: bool = True) -> None:
        self.run_dir = run_dir
        self.enabled = enabled
        self.metrics_path = run_dir / "metrics.csv"
        self.steps_path = run_dir / "steps.csv"
        self._writer: Any = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # imported lazily: it is slow to import

            self._writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def log_step(self, step: int, values: Mapping[str, float]) -> None:
        """Append one row (step + values) to ``steps.csv`` and write the values as ``train/<name>`` scalars."""
        if not self.enabled:
            return
        row = {"step": step, **values}
        new_file = not self.steps_path.exists()
        with self.steps_path.open("a", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(row), extrasaction="ignore")
            if new_file:
                writer.writeheader()
            writer.writerow(row)
        if self._writer is not None:
            for name, value in values.items():
                self._writer.add_scalar(f"train/{name}", value, step)

    def log_epoch(self, history: Sequence[Mapping[str, Any]]) -> None:
        """Rewrite ``metrics.csv`` from the whole history and send the last row to TensorBoard.

        Rewriting the table each epoch keeps one header even when later epochs add columns (a first validation,
        a new loss part), and keeps the file consistent after a resume.
        """
        if not self.enabled or not history:
            return
        columns: list[str] = []
        for row in history:
            columns.extend(key for key in row if key not in columns)
        tmp = self.metrics_path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(history)
        tmp.replace(self.metrics_path)
        if self._writer is not None:
            last = history[-1]
            step = int(last.get("step", 0))
            for key, value in last.items():
                if key in ("epoch", "step") or not isinstance(value, int | float) or math.isnan(float(value)):
                    continue
                self._writer.add_scalar(key.replace("_", "/", 1), float(value), step)
            self._writer.flush()

    def close(self) -> None:
        """Flush and close TensorBoard."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def read_csv(path: Path) -> list[dict[str, float]]:
    """Read a numeric CSV written by :class:`RunLog`; empty cells become NaN, text cells are dropped."""
    rows: list[dict[str, float]] = []
    if not path.is_file():
        return rows
    with path.open(newline="", encoding="utf-8") as handle:
        for raw in csv.DictReader(handle):
            row: dict[str, float] = {}
            for key, value in raw.items():
                try:
                    row[key] = float(value) if value not in ("", None) else math.nan
                except ValueError:
                    continue
            rows.append(row)
    return rows

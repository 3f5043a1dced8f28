"""Leave-one-tile-out folds: ``python -m training.folds --config A.yaml --config B.yaml --folds 1 3 5``.

Chooses a recipe by held-out tiles instead of one validation tile: for every fold (a tile number) each config is
trained by the project's trainer (``python -m training.train``, the same path fine-tuning uses) on all the other
tiles and scored on the held-out one, with the same wall-clock budget. The configs of one fold run **at the same
time**, one process each (``--threads`` torch threads apiece), so they share the machine equally and a recipe is
never favoured by running alone. Folds run one after another.

The score of a fold is the **last** validation of the run (the end of its cosine schedule), not the best one: the
held-out tile must not choose the checkpoint it is scored on. The best validation is reported too, as a measure
of how noisy one tile is.

Nothing is lost when the work stops: every run resumes from its ``last.pt`` (``--resume auto``), the time budget
counts the time already spent, and a finished run (``done.json`` in its folder) is not run again. The table is
rewritten after every fold (``--json``), and each recipe's fold scores are written as card metrics
(``<out-dir>/<recipe>/card_metrics.json``: ``fold_mean_miou``, ``fold<k>_miou``) for ``python -m training.export
--card-metrics`` when the shipped model is then trained on every tile.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os

# Runs this interpreter on the project's own trainer with arguments built here, never a shell or user text.
import subprocess  # nosec B404
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from engine.errors import InvalidInputError
from training.run_log import read_csv

__all__ = ["FoldScore", "fold_table", "main", "run_fold", "write_card_metrics"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FoldScore:
    """One config's result on one held-out tile.

    Attributes:
        recipe: Config file stem.
        fold_tile: The held-out tile number.
        last_miou: mIoU of the run's last validation (the fold's score).
        best_miou: Best validation mIoU during the run (optimistic: chosen on the held-out tile).
        steps: Optimizer steps made.
        minutes: Wall-clock minutes of training.
        last_iou: Per-class IoU of the last validation.
    """

    recipe: str
    fold_tile: int
    last_miou: float
    best_miou: float
    steps: int
    minutes: float
    last_iou: dict[str, float]


def run_dir(out_dir: Path, config: Path, fold_tile: int) -> Path:
    """Folder of one config's run on one fold."""
    return out_dir / config.stem / f"fold{fold_tile}"


def _command(
    config: Path, fold_tile: int, out_dir: Path, minutes: float, threads: int, extra: Sequence[str]
) -> list[str]:
    folder = run_dir(out_dir, config, fold_tile)
    return [
        sys.executable, "-m", "training.train", "--config", str(config), "--resume", "auto",
        "--set", f"run.out_dir={folder.parent}", "--set", f"run.name={folder.name}",
        "--set", f"data.options.val_tiles=[{fold_tile}]", "--set", "data.options.test_tiles=[]",
        "--set", f"run.max_minutes={minutes}", "--set", f"run.threads={threads}", "--set", "run.plots=false",
        *[item for override in extra for item in ("--set", override)],
    ]  # fmt: skip


def run_fold(
    configs: Sequence[Path], fold_tile: int, out_dir: Path, minutes: float, threads: int, extra: Sequence[str] = ()
) -> None:
    """Train every config on one fold at the same time (one process each) and wait for all of them.

    Raises:
        InvalidInputError: If a run fails; its log file is named.
    """
    running: list[tuple[Path, subprocess.Popen[bytes], Path]] = []
    for config in configs:
        folder = run_dir(out_dir, config, fold_tile)
        if (folder / "done.json").is_file():
            logger.info("%s fold %d already done; skipped.", config.stem, fold_tile)
            continue
        folder.mkdir(parents=True, exist_ok=True)
        log_path = folder / "train.log"
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        with log_path.open("ab") as log:
            command = _command(config, fold_tile, out_dir, minutes, threads, extra)
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)  # nosec B603
        logger.info("%s fold %d: training (log %s).", config.stem, fold_tile, log_path)
        running.append((config, process, log_path))
    failed = []
    for config, process, log_path in running:
        if process.wait() != 0:
            failed.append(f"{config.stem} fold {fold_tile} (see {log_path})")
            continue
        score = read_score(run_dir(out_dir, config, fold_tile), config.stem, fold_tile)
        (run_dir(out_dir, config, fold_tile) / "done.json").write_text(json.dumps(asdict(score), indent=1))
    if failed:
        raise InvalidInputError(f"Training failed for {', '.join(failed)}; fix the cause and rerun to resume.")


def read_score(folder: Path, recipe: str, fold_tile: int) -> FoldScore:
    """The fold score of a run folder, from its ``metrics.csv``."""
    rows = [r for r in read_csv(folder / "metrics.csv") if not math.isnan(r.get("val_miou", math.nan))]
    if not rows:
        raise InvalidInputError(f"Run '{folder}' has no validation row in metrics.csv; was it trained?")
    last = rows[-1]
    return FoldScore(
        recipe=recipe,
        fold_tile=fold_tile,
        last_miou=round(last["val_miou"], 4),
        best_miou=round(max(r["val_miou"] for r in rows), 4),
        steps=int(last.get("step", 0)),
        minutes=round(last.get("elapsed_s", math.nan) / 60.0, 1),
        last_iou={k[len("val_iou_") :]: round(v, 4) for k, v in last.items() if k.startswith("val_iou_")},
    )


def fold_table(out_dir: Path, configs: Sequence[Path], folds: Sequence[int]) -> dict[str, Any]:
    """Every finished run's score and, per recipe, the mean over the folds it has finished."""
    scores = [
        json.loads((run_dir(out_dir, c, k) / "done.json").read_text())
        for c in configs
        for k in folds
        if (run_dir(out_dir, c, k) / "done.json").is_file()
    ]
    summary = {}
    for config in configs:
        own = [s for s in scores if s["recipe"] == config.stem]
        if own:
            summary[config.stem] = {
                "folds": [s["fold_tile"] for s in own],
                "mean_last_miou": round(sum(s["last_miou"] for s in own) / len(own), 4),
                "mean_best_miou": round(sum(s["best_miou"] for s in own) / len(own), 4),
            }
    return {"folds": list(folds), "runs": scores, "summary": summary}


def write_card_metrics(out_dir: Path, table: dict[str, Any]) -> None:
    """Write each recipe's fold scores as ``<out_dir>/<recipe>/card_metrics.json`` (card metric names)."""
    for recipe, summary in table["summary"].items():
        metrics = {"fold_mean_miou": summary["mean_last_miou"]}
        metrics |= {f"fold{r['fold_tile']}_miou": r["last_miou"] for r in table["runs"] if r["recipe"] == recipe}
        (out_dir / recipe / "card_metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.folds", description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", required=True, type=Path, help="a recipe (repeatable)")
    parser.add_argument("--folds", nargs="+", type=int, required=True, help="held-out tile numbers, e.g. 1 3 5")
    parser.add_argument("--minutes", type=float, default=15.0, help="training budget of every run (wall clock)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--out-dir", type=Path, default=Path("runs/folds"))
    parser.add_argument("--json", type=Path, default=None, help="write the fold table here after every fold")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args = _parse_args(argv)
    for config in args.config:
        if not config.is_file():
            raise SystemExit(f"Config '{config}' does not exist; give a YAML file under training/configs/.")
    for fold_tile in args.folds:
        try:
            run_fold(args.config, fold_tile, args.out_dir, args.minutes, args.threads, args.set)
        except InvalidInputError as exc:
            logger.error("%s", exc)
            return 1
        table = fold_table(args.out_dir, args.config, args.folds)
        write_card_metrics(args.out_dir, table)
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(table, indent=1) + "\n")
        logger.info("After fold %d: %s", fold_tile, json.dumps(table["summary"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

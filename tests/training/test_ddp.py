"""DistributedDataParallel on the CPU: two gloo processes train together; only rank 0 writes."""

from __future__ import annotations

import csv
import os
import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp

from tests.training.trainer_helpers import prepared_fake, tiny_config


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _worker(rank: int, world_size: int, port: int, config: str) -> None:
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"})  # fmt: skip
    torch.set_num_threads(1)
    from training.train import main

    code = main(["--config", config])
    if code != 0:
        raise SystemExit(code)


def test_two_cpu_processes_train_in_step_and_only_rank_0_writes(tmp_path: Path) -> None:
    root = prepared_fake("vaihingen", tmp_path / "data")
    config = tiny_config(
        tmp_path / "ddp.yaml",
        data={"name": "vaihingen", "root": str(root), "batch_size": 1},
        run={"out_dir": str(tmp_path / "runs"), "name": "ddp", "max_val_images": 0},
    )
    mp.spawn(_worker, args=(2, _free_port(), str(config)), nprocs=2, join=True)
    run_dir = tmp_path / "runs" / "ddp"
    with (run_dir / "steps.csv").open(newline="") as handle:
        steps = list(csv.DictReader(handle))
    assert [int(row["step"]) for row in steps] == [1, 2]  # one writer, not one row per process
    with (run_dir / "metrics.csv").open(newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    assert int(row["step"]) == 2
    checkpoint = torch.load(run_dir / "best.pt", weights_only=True)
    assert not any(key.startswith("module.") for key in checkpoint["state_dict"])  # saved unwrapped
    assert not list(run_dir.glob(".*.tmp*"))


def test_bicorseg_fisher_terms_use_the_global_batch_with_one_image_per_process(tmp_path: Path) -> None:
    root = prepared_fake("vaihingen", tmp_path / "data")
    config = tiny_config(
        tmp_path / "ddp.yaml",
        model="bicorseg_small",
        data={"name": "vaihingen", "root": str(root), "batch_size": 1},
        run={"out_dir": str(tmp_path / "runs"), "name": "ddp", "max_val_images": 0},
    )
    mp.spawn(_worker, args=(2, _free_port(), str(config)), nprocs=2, join=True)
    with (tmp_path / "runs" / "ddp" / "metrics.csv").open(newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    # One image per process: a per-process Fisher ratio would be 0; over the global batch of 2 it is not.
    fisher = [float(value) for key, value in row.items() if key.startswith("train_fisher_l")]
    assert fisher and all(value > 0 for value in fisher)

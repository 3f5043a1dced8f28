"""The Fisher loss under DDP: two gloo processes on CPU give the value and gradient of the whole batch in one."""

from __future__ import annotations

import itertools
import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

N, E = 3, 4
#: (global batch, images of rank 0): one image per rank (the case that used to give 0) and an uneven split.
SPLITS = ((2, 1), (5, 3))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _data(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(batch)
    return torch.randn(batch, N, E, generator=g), torch.randn(E, E, generator=g)


def _worker(rank: int, world_size: int, port: int, out: str) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        from training.distributed import Distributed, mean_over_ranks
        from training.losses import FisherDiscriminantLoss

        results: dict[str, object] = {}
        for batch, first in SPLITS:
            inputs, weight = _data(batch)
            weight.requires_grad_(True)  # the shared "model parameter"
            local = inputs[:first] if rank == 0 else inputs[first:]
            loss = FisherDiscriminantLoss()(local @ weight)
            loss.backward()
            grad = weight.grad.clone()
            dist.all_reduce(grad)  # what DDP does with parameter gradients: the mean over processes
            results[f"loss_{batch}"] = float(loss)
            results[f"grad_{batch}"] = grad / world_size
        ctx = Distributed(rank=rank, world_size=world_size)
        results["mean"] = mean_over_ranks(1.0 + 2.0 * rank, ctx)  # ranks log 1 and 3
        torch.save(results, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _fisher_by_hand(embeddings: torch.Tensor) -> torch.Tensor:
    """S_w / (max(S_b, 1e-4) + 1e-6) with explicit loops over images and class pairs (spec 5.4)."""
    batch = embeddings.shape[0]
    centres = [sum(embeddings[b, n] for b in range(batch)) / batch for n in range(N)]
    within = sum(((embeddings[b, n] - centres[n]) ** 2).sum() for b in range(batch) for n in range(N)) / (batch * N)
    pairs = list(itertools.combinations(range(N), 2))
    between = sum(((centres[i] - centres[j]) ** 2).sum() for i, j in pairs) / len(pairs)
    return within / (torch.clamp(between, min=1e-4) + 1e-6)


def test_fisher_loss_over_two_processes_equals_the_whole_batch_in_one(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for batch, _ in SPLITS:
        inputs, weight = _data(batch)
        weight.requires_grad_(True)
        expected = _fisher_by_hand(inputs @ weight)
        (expected_grad,) = torch.autograd.grad(expected, weight)
        expected = expected.detach()
        assert float(expected) > 0.1  # a real value, not the 0 of a one-image shard
        for result in ranks:
            assert abs(result[f"loss_{batch}"] - float(expected)) < 1e-5 * max(1.0, float(expected))
            torch.testing.assert_close(result[f"grad_{batch}"], expected_grad, rtol=1e-4, atol=1e-6)
    assert [result["mean"] for result in ranks] == [2.0, 2.0]


def test_fisher_loss_in_one_process_matches_the_hand_formula() -> None:
    from training.losses import FisherDiscriminantLoss, fisher_statistics_loss

    inputs, weight = _data(5)
    expected = float(_fisher_by_hand(inputs @ weight))
    assert abs(float(FisherDiscriminantLoss()(inputs @ weight)) - expected) < 1e-5 * expected
    value, images = fisher_statistics_loss(inputs @ weight)
    assert images == 5
    assert abs(float(value) - expected) < 1e-5 * expected

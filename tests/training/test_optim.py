"""AdamW parameter groups and the Lookahead wrapper, against hand-computed updates."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from training.config import OptimConfig
from training.optim import Lookahead, build_optimizer, set_learning_rate


def _sgd_lookahead(k: int, alpha: float) -> tuple[nn.Parameter, Lookahead]:
    param = nn.Parameter(torch.tensor([1.0]))
    return param, Lookahead(torch.optim.SGD([param], lr=0.1), k=k, alpha=alpha)


def _step(param: nn.Parameter, optimizer: torch.optim.Optimizer) -> None:
    optimizer.zero_grad()
    param.sum().backward()  # gradient 1: plain SGD moves the weight by -lr each step
    optimizer.step()


def test_lookahead_pulls_fast_weights_back_every_k_steps() -> None:
    param, optimizer = _sgd_lookahead(k=2, alpha=0.5)
    _step(param, optimizer)
    assert param.item() == pytest.approx(0.9)  # fast weights move freely between synchronisations
    _step(param, optimizer)
    # fast 0.8; slow 1.0 + 0.5 * (0.8 - 1.0) = 0.9; the model gets the slow weights
    assert param.item() == pytest.approx(0.9)
    _step(param, optimizer)
    _step(param, optimizer)
    # fast 0.9 -> 0.8 -> 0.7; slow 0.9 + 0.5 * (0.7 - 0.9) = 0.8
    assert param.item() == pytest.approx(0.8)


def test_lookahead_with_alpha_1_equals_the_inner_optimizer() -> None:
    param, optimizer = _sgd_lookahead(k=3, alpha=1.0)
    for _ in range(6):
        _step(param, optimizer)
    assert param.item() == pytest.approx(1.0 - 6 * 0.1)


def test_lookahead_state_dict_round_trip_resumes_identically() -> None:
    param, optimizer = _sgd_lookahead(k=3, alpha=0.5)
    _step(param, optimizer)
    state = optimizer.state_dict()
    twin_param, twin = _sgd_lookahead(k=3, alpha=0.5)
    with torch.no_grad():
        twin_param.copy_(param)
    twin.load_state_dict(state)
    for _ in range(2):
        _step(param, optimizer)
        _step(twin_param, twin)
    assert twin_param.item() == pytest.approx(param.item())


def test_lookahead_rejects_bad_settings() -> None:
    param = nn.Parameter(torch.zeros(1))
    with pytest.raises(ValueError, match="k must be at least 1"):
        Lookahead(torch.optim.SGD([param], lr=0.1), k=0)
    with pytest.raises(ValueError, match="alpha"):
        Lookahead(torch.optim.SGD([param], lr=0.1), alpha=0.0)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Conv2d(3, 4, 3)
        self.norm = nn.BatchNorm2d(4)
        self.head = nn.Conv2d(4, 2, 1)


def test_biases_and_norms_get_no_weight_decay_and_backbone_gets_its_multiplier() -> None:
    optimizer = build_optimizer(_Net(), OptimConfig(lr=1e-3, weight_decay=0.05, backbone_lr_mult=0.1))
    by_param = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    net_params = dict(_Net().named_parameters())
    assert len(by_param) == len(net_params)
    for group in optimizer.param_groups:
        decayed = any(p.ndim > 1 for p in group["params"])
        assert group["weight_decay"] == (0.05 if decayed else 0.0)
    set_learning_rate(optimizer, 2e-3)
    assert sorted({round(g["lr"], 8) for g in optimizer.param_groups}) == [2e-4, 2e-3]


def test_lookahead_is_applied_when_configured() -> None:
    optimizer = build_optimizer(_Net(), OptimConfig(lookahead=True, lookahead_k=4, lookahead_alpha=0.25))
    assert isinstance(optimizer, Lookahead)
    assert (optimizer.k, optimizer.alpha) == (4, 0.25)
    assert isinstance(optimizer.base, torch.optim.AdamW)


@pytest.mark.parametrize(
    ("name", "options", "encoder_roots"),
    [
        ("bicorseg_small", {"backbone": "atto", "embed_dim": 32}, {"encoder"}),
        ("hi_resnet_small", {}, {"stem", "funnel", "first_transition", "new_branches", "stages"}),
    ],
)
def test_backbone_lr_mult_acts_on_each_models_encoder(name: str, options: dict, encoder_roots: set[str]) -> None:
    from engine.models import create_model

    model = create_model(name, num_classes=3, **options)
    optimizer = build_optimizer(model, OptimConfig(lr=1e-3, backbone_lr_mult=0.1))
    set_learning_rate(optimizer, 2e-3)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert len(lr_of) == len(named)
    for param_name, param in named.items():
        expected = 2e-4 if param_name.split(".")[0] in encoder_roots else 2e-3
        assert lr_of[id(param)] == pytest.approx(expected), param_name
    assert {round(lr, 8) for lr in lr_of.values()} == {2e-4, 2e-3}  # both groups exist


def test_backbone_lr_mult_on_a_model_without_encoder_is_an_error() -> None:
    from engine.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="backbone_lr_mult"):
        build_optimizer(nn.Sequential(nn.Conv2d(3, 2, 1)), OptimConfig(backbone_lr_mult=0.1))

"""Self-supervised backbone pre-training with MoCo v2: ``python -m training.pretrain IMAGES -o backbone.pt``.

``--config training/configs/pretrain/millionaid_hi_resnet_moco.yaml`` takes the option values of the Hi-ResNet
paper's MoCo v2 run (Table III) from a file; command-line options override them.

MoCo v2 (He et al. 2020; Chen et al. 2020): two augmented views of each image go through a query encoder and
a momentum (key) encoder whose weights trail the query encoder's (``m = 0.999``). The InfoNCE loss asks each
query to pick its own key among the current keys of the other images plus a queue of older keys
(temperature 0.2). The encoder here is a model's feature extractor (``forward_features``: Hi-ResNet's branches,
BiCoR-Seg's encoder), global-average pooled over every feature level, followed by a 2-layer MLP head that is
thrown away afterwards.

Any folder of images works (unlabelled tiles of the segmentation datasets, Million-AID if you have it); nothing is
downloaded. The output holds only backbone weights under the model's own parameter names, which
``model.pretrained_backbone`` (or :func:`load_backbone_weights`) loads with a report of missing and unexpected keys.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from engine.errors import InvalidInputError, ModelLoadError
from engine.model_card import load_checkpoint
from engine.models import create_model
from training.command import run_json_command
from training.moco import MoCo, PretrainImages, backbone_state_dict, find_images, two_views

__all__ = [
    "BackboneLoadReport",
    "MoCo",
    "PretrainImages",
    "backbone_state_dict",
    "find_images",
    "load_backbone_weights",
    "main",
    "two_views",
]

logger = logging.getLogger(__name__)

#: Prefixes written by the reference MoCo code and by DDP, stripped before matching the model's names.
_STRIPPED_PREFIXES = ("module.encoder_q.", "encoder_q.", "module.", "backbone.")
#: Projection-head keys of MoCo checkpoints, never part of a backbone.
_HEAD_PREFIXES = ("fc.", "fc1.", "fc2.", "head.", "projector.", "queue", "encoder_k.")


@dataclass(frozen=True)
class BackboneLoadReport:
    """What :func:`load_backbone_weights` loaded.

    Attributes:
        loaded: Model keys that received weights.
        missing: Model keys the file did not have (they keep their initialisation; heads are expected here).
        unexpected: File keys the model does not have (or whose shapes differ), which were skipped.
    """

    loaded: tuple[str, ...]
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]


def _normalise_key(key: str) -> str:
    for prefix in _STRIPPED_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def load_backbone_weights(model: nn.Module, path: Path) -> BackboneLoadReport:
    """Load backbone weights from a MoCo/pretraining file into a model, reporting every key that did not fit.

    Accepts our ``training.pretrain`` output (``{"state_dict": ...}``), reference MoCo checkpoints
    (``module.encoder_q.*``) and bare state dicts. Projection-head keys are dropped; keys whose shapes differ
    from the model's are reported as unexpected instead of failing the load.

    Raises:
        ModelLoadError: If the file is unreadable or not a state dict, or nothing in it fits the model.
    """
    raw = load_checkpoint(Path(path))
    state = raw.get("state_dict", raw)
    if not isinstance(state, Mapping):
        raise ModelLoadError(f"'{path}' holds no state dict; pass a file written by training.pretrain.")
    own = model.state_dict()
    usable: dict[str, Tensor] = {}
    unexpected: list[str] = []
    for key, value in state.items():
        name = _normalise_key(str(key))
        if any(name.startswith(p) for p in _HEAD_PREFIXES) or any(str(key).startswith(p) for p in _HEAD_PREFIXES):
            continue
        if name in own and isinstance(value, Tensor) and own[name].shape == value.shape:
            usable[name] = value
        else:
            unexpected.append(str(key))
    if not usable:
        raise ModelLoadError(
            f"No weights in '{path}' fit model {type(model).__name__}; was it pre-trained for another architecture?"
        )
    model.load_state_dict(usable, strict=False)
    missing = tuple(sorted(set(own) - set(usable)))
    report = BackboneLoadReport(tuple(sorted(usable)), missing, tuple(sorted(unexpected)))
    logger.info("Backbone weights from %s: %d tensors loaded, %d missing (kept initial), %d unexpected (skipped).",
                path, len(report.loaded), len(report.missing), len(report.unexpected))  # fmt: skip
    if report.unexpected:
        logger.warning("Unexpected keys skipped: %s", ", ".join(report.unexpected[:20]))
    return report


# --- Command line -----------------------------------------------------------------------------------------------------


def _config_defaults(path: Path, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Option values from a YAML file (keys = option names with ``_``, e.g. ``batch_size``; ``model_options``)."""
    import yaml

    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise InvalidInputError(f"Cannot read the pre-training config '{path}': {exc}") from exc
    if not isinstance(raw, dict):
        raise InvalidInputError(f"Pre-training config '{path}' must be a mapping of option names to values.")
    values = dict(raw)
    options = values.pop("model_options", None) or {}
    if not isinstance(options, dict):
        raise InvalidInputError(f"'model_options' in '{path}' must be a mapping, e.g. {{in_channels: 4}}.")
    known = {action.dest for action in parser._actions} - {"help", "images", "output", "config", "model_option"}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InvalidInputError(f"Unknown keys {unknown} in '{path}'; valid keys: {', '.join(sorted(known))}.")
    values["model_option"] = [f"{key}={json.dumps(value)}" for key, value in options.items()]
    return values


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.pretrain", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=None,
                        help="YAML file of option values (e.g. training/configs/pretrain/*.yaml); "
                             "options given on the command line win")  # fmt: skip
    parser.add_argument("images", type=Path, help="folder of images (searched recursively)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="backbone weights file to write (.pt)")
    parser.add_argument("--model", default="hi_resnet", help="model whose backbone is pre-trained (engine.models)")
    parser.add_argument("--model-option", action="append", default=[], metavar="KEY=JSON",
                        help="architecture option, e.g. --model-option in_channels=4")  # fmt: skip
    parser.add_argument("--size", type=int, default=224, help="edge of the augmented views in pixels")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.03, help="SGD learning rate for batch 256 (scaled linearly)")
    parser.add_argument("--queue", type=int, default=4096, help="number of negative keys")
    parser.add_argument("--momentum", type=float, default=0.999, help="key-encoder momentum")
    parser.add_argument("--temperature", type=float, default=0.2)
    parser.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0 = all epochs)")
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--seed", type=int, default=42)
    known, _ = parser.parse_known_args(argv)
    if known.config is not None:
        defaults = _config_defaults(known.config, parser)
        extra = defaults.pop("model_option")
        parser.set_defaults(**defaults)
        args = parser.parse_args(argv)
        args.model_option = [*extra, *args.model_option]  # command-line options come last and so win
        return args
    return parser.parse_args(argv)


def _model_options(pairs: Sequence[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise InvalidInputError(f"--model-option '{pair}' must look like key=value.")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def pretrain(args: argparse.Namespace) -> dict[str, Any]:
    """Run MoCo v2 as described by the parsed command line and save the backbone; returns a summary."""
    from training.distributed import select_device
    from training.schedule import learning_rate

    find_images(args.images)  # fail before building a large model
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(args.device)
    options = _model_options(args.model_option)
    model: nn.Module = create_model(args.model, num_classes=2, **options)
    channels = int(getattr(model, "in_channels", 3))
    divisor = int(getattr(model, "size_divisor_px", 1))
    if args.size % divisor:
        raise InvalidInputError(f"--size {args.size} is not a multiple of the model's size divisor {divisor}.")
    moco = MoCo(model, sample_size_px=args.size, queue_size=args.queue, momentum=args.momentum,
                temperature=args.temperature).to(device)  # fmt: skip
    data = PretrainImages(args.images, window_px=args.size * 2, bands=channels)
    loader: DataLoader[Tensor] = DataLoader(data, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                            num_workers=args.num_workers)  # fmt: skip
    if len(loader) == 0:
        raise InvalidInputError(
            f"{len(data)} images are fewer than one batch of {args.batch_size}; lower --batch-size."
        )
    base_lr = args.lr * args.batch_size / 256
    optimizer = torch.optim.SGD([p for p in moco.parameters() if p.requires_grad], lr=base_lr, momentum=0.9,
                                weight_decay=1e-4)  # fmt: skip
    total = args.epochs * len(loader) if not args.max_steps else min(args.max_steps, args.epochs * len(loader))
    mean = (0.485, 0.456, 0.406)[:channels] if channels <= 3 else (0.5,) * channels
    std = (0.229, 0.224, 0.225)[:channels] if channels <= 3 else (0.25,) * channels
    generator = torch.Generator().manual_seed(args.seed)
    step, loss_value, accuracy_value = 0, math.nan, math.nan
    moco.train()
    while step < total:
        for batch in loader:
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, total, base_lr, 0, 0.0)
            view_q, view_k = two_views(batch, args.size, generator, mean, std)
            loss, accuracy = moco(view_q.to(device), view_k.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            step += 1
            loss_value, accuracy_value = float(loss.detach()), float(accuracy)
            if step % 10 == 0 or step == total:
                logger.info("step %d/%d: InfoNCE %.4f, key top-1 %.3f", step, total, loss_value, accuracy_value)
            if step >= total:
                break
    weights = backbone_state_dict(model, sample_size_px=args.size)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": weights, "architecture": args.model, "architecture_args": options,
                "method": "moco_v2", "steps": step}, args.output)  # fmt: skip
    return {"output": str(args.output), "tensors": len(weights), "steps": step, "final_loss": loss_value,
            "final_key_accuracy": accuracy_value, "images": len(data.paths)}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: prints a JSON summary; exit code 2 for bad input."""
    args = _parse_args(argv)
    return run_json_command(lambda: pretrain(args))


if __name__ == "__main__":
    raise SystemExit(main())

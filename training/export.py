"""Export a training checkpoint to ONNX with its model card: ``python -m training.export CKPT -o MODEL.onnx``.

The checkpoint's card (classes, colours, normalisation, tile size, metrics, licence) goes into the ONNX
``metadata_props`` through :func:`engine.export.export_onnx`; the export is then checked against torch with
ONNX Runtime on random inputs (largest logit difference and arg-max agreement) and refused when they disagree.
``--int8`` additionally writes an int8 copy: ``--int8 static`` (default) quantises weights per channel and
activations with ranges calibrated on crops of the checkpoint's own training images (QDQ format, which ONNX
Runtime runs as integer convolutions: smaller and faster on CPUs); ``--int8 dynamic`` quantises weights only
(no data needed, but ONNX Runtime's dynamic integer convolutions are slower than float32 on many CPUs). The
int8 file's agreement with float32 is reported, not enforced.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from engine.errors import BiCoRSegError, InvalidInputError
from engine.export import DEFAULT_ATOL, check_onnx_parity, export_checked, parity_sizes
from engine.model_card import ModelCard, embed_card
from engine.model_file import ModelFile
from engine.models.from_checkpoint import model_from_checkpoint
from training.command import run_json_command
from training.config import resolve_config
from training.datasets import build_dataset
from training.transforms import Normalization, Sample, crop_sample, pad_sample

__all__ = ["calibration_inputs", "export_checkpoint", "main", "quantize_int8", "quantize_int8_static"]

Int8Mode = Literal["static", "dynamic"]
#: Crops drawn from the training images to calibrate static int8 activation ranges.
CALIBRATION_CROPS = 32

logger = logging.getLogger(__name__)


def quantize_int8(source: Path, target: Path, card: ModelCard) -> Path:
    """Dynamic int8 weight quantisation with ONNX Runtime; the card is written into the quantised file again."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)
    _write_card(target, card.replace(description=f"{card.description} (int8 dynamic quantisation)".strip()))
    return target


def _write_card(target: Path, card: ModelCard) -> None:
    import onnx

    proto = onnx.load(str(target))
    embed_card(proto, card)
    onnx.save(proto, str(target))


def calibration_inputs(
    checkpoint: Mapping[str, Any], card: ModelCard, count: int = CALIBRATION_CROPS, seed: int = 0
) -> list[NDArray[np.float32]]:
    """Normalised ``(1, C, tile, tile)`` crops of the checkpoint's training images, for int8 calibration.

    Images are loaded with the training split's dataset options (same tiles, same downscale), so activation
    ranges are measured on what the model was trained on. Images smaller than a tile are padded with zeros.

    Raises:
        InvalidInputError: If the checkpoint carries no config or its training data cannot be found.
    """
    if "config" not in checkpoint:
        raise InvalidInputError("The checkpoint carries no training config; use --int8 dynamic, which needs no data.")
    config = resolve_config(checkpoint["config"], [])
    data = config.data
    try:
        dataset = build_dataset(data.name, data.root, data.train_split, normalization=Normalization.from_card(card),
                                **data.options)  # fmt: skip
    except BiCoRSegError as error:
        raise InvalidInputError(
            f"Static int8 calibration needs the training images ({data.name} at '{data.root}'): {error} "
            "Run from the repository root, or use --int8 dynamic."
        ) from error
    rng = np.random.default_rng(seed)
    size = card.tile_size_px
    crops: list[NDArray[np.float32]] = []
    for index in rng.integers(0, len(dataset), size=count):
        tensors = dataset[int(index)]
        sample: Sample = {"image": tensors["image"].numpy(), "mask": tensors["mask"].numpy()}
        height, width = sample["mask"].shape
        top = int(rng.integers(0, max(height - size, 0) + 1))
        left = int(rng.integers(0, max(width - size, 0) + 1))
        window = crop_sample(sample, top, left, min(size, height), min(size, width))
        crops.append(pad_sample(window, size, size)["image"][None])  # normalised image padded with 0
    return crops


def quantize_int8_static(source: Path, target: Path, card: ModelCard, inputs: Sequence[NDArray[np.float32]]) -> Path:
    """Static int8 (QDQ, per-channel weights, uint8 activations calibrated on ``inputs``); card written again."""
    import tempfile

    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not inputs:
        raise InvalidInputError("Static int8 quantisation needs at least one calibration input.")
    input_name = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"]).get_inputs()[0].name

    class _Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._items = iter([{input_name: array} for array in inputs])

        def get_next(self) -> dict[str, NDArray[np.float32]] | None:
            return next(self._items, None)

    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        # ONNX shape inference + graph cleanup the quantiser expects; the symbolic pass gives up on the window
        # attention reshapes of dynamic-size Hi-ResNet graphs, and static QDQ does not need it.
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(target), _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)  # fmt: skip
    _write_card(target, card.replace(description=f"{card.description} (int8 static quantisation)".strip()))
    return target


def export_checkpoint(
    checkpoint: Path,
    output: Path,
    int8: Int8Mode | None = None,
    heatmaps: bool = False,
    opset: int = 17,
    atol: float = DEFAULT_ATOL,
    card_json: Path | None = None,
    card_metrics: Path | None = None,
    training_data: str | None = None,
) -> dict[str, Any]:
    """Export, check and optionally quantise one checkpoint.

    Args:
        checkpoint: A checkpoint written by ``training.train`` (or any ``{"state_dict", "model_card"}`` file).
        output: Destination ``.onnx``; with ``int8`` the quantised model goes to ``<stem>.int8.onnx`` beside it.
        int8: Also write an int8 copy: ``"static"`` (calibrated on the checkpoint's training images) or
            ``"dynamic"`` (weights only); None for none.
        heatmaps: Export the BiCoR-Seg class heatmaps as extra outputs.
        opset: ONNX opset.
        atol: Largest accepted logit difference between torch and ONNX Runtime.
        card_json: Also write the card as a JSON file here.
        card_metrics: A JSON file ``{name: number}`` whose values replace the card's ``metrics`` (for example the
            fold scores of ``python -m training.folds``, when the checkpoint's own validation tile was trained on).
        training_data: Replaces the card's ``training_data`` text (what the model was trained on and how the
            checkpoint was chosen), when the trainer's does not describe it (e.g. the last checkpoint is shipped).

    Returns:
        A report: paths, sizes and the parity numbers.

    Raises:
        BiCoRSegError: If the float32 export disagrees with torch beyond ``atol`` / the arg-max threshold.
    """
    if output.suffix.lower() != ".onnx":
        raise InvalidInputError(f"Output '{output}' must end in .onnx.")
    model_file = ModelFile.open(checkpoint)
    card = model_file.card
    if card_metrics is not None:
        card = card.replace(metrics=_read_metrics(card_metrics))
    if training_data is not None:
        card = card.replace(training_data=training_data)
    model = model_from_checkpoint(model_file.checkpoint, card, model_file.path.name)
    parity = export_checked(model, card, output, opset=opset, heatmaps=heatmaps, atol=atol)
    divisor = max(int(getattr(model, "size_divisor_px", 1)), card.size_divisor_px)
    report: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "onnx": str(output),
        "onnx_mb": round(output.stat().st_size / 2**20, 2),
        "architecture": card.architecture,
        "classes": list(card.class_names),
        "parity": parity,
    }
    if int8:
        int8_path = output.with_name(f"{output.stem}.int8.onnx")
        if int8 == "static":
            quantize_int8_static(output, int8_path, card, calibration_inputs(model_file.checkpoint, card))
        else:
            quantize_int8(output, int8_path, card)
        int8_parity = check_onnx_parity(model, int8_path, parity_sizes(card, divisor))
        report.update({"int8_mode": int8, "int8_onnx": str(int8_path), "int8_onnx_mb": round(int8_path.stat().st_size / 2**20, 2),
                       "int8_parity": int8_parity})  # fmt: skip
    if card_json is not None:
        card_json.write_text(json.dumps(card.to_dict(), indent=2), encoding="utf-8")
        report["card_json"] = str(card_json)
    return report


def _read_metrics(path: Path) -> dict[str, float]:
    """A flat ``{name: number}`` JSON file of card metrics.

    Raises:
        InvalidInputError: If it is missing, not JSON, or holds anything but names and finite numbers.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidInputError(
            f"Cannot read card metrics '{path}' ({exc}); give a JSON file of name: number."
        ) from exc
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        for k, v in data.items()
    ):
        raise InvalidInputError(f"Card metrics '{path}' must be one JSON object of names and finite numbers.")
    return {k: float(v) for k, v in data.items()}


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.export", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="checkpoint written by training.train (e.g. runs/NAME/best.pt)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="destination .onnx file")
    parser.add_argument("--int8", nargs="?", const="static", choices=("static", "dynamic"), default=None,
                        help="also write <stem>.int8.onnx: static (default; calibrated on the training images) "
                        "or dynamic (weights only)")  # fmt: skip
    parser.add_argument("--heatmaps", action="store_true", help="export BiCoR-Seg class heatmaps as extra outputs")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    parser.add_argument("--atol", type=float, default=DEFAULT_ATOL, help="largest accepted logit difference")
    parser.add_argument("--card-json", type=Path, default=None, help="also write the model card as JSON here")
    parser.add_argument("--card-metrics", type=Path, default=None,
                        help="JSON {name: number} replacing the card's metrics (e.g. runs/folds/RECIPE/card_metrics.json)")  # fmt: skip
    parser.add_argument("--training-data", default=None, metavar="TEXT",
                        help="replaces the card's training_data text (what it was trained on, which checkpoint)")  # fmt: skip
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: prints the report as JSON; exit code 2 for bad input, 1 for a failed check."""
    args = _parse_args(argv)
    return run_json_command(
        lambda: export_checkpoint(
            args.checkpoint,
            args.output,
            int8=args.int8,
            heatmaps=args.heatmaps,
            opset=args.opset,
            atol=args.atol,
            card_json=args.card_json,
            card_metrics=args.card_metrics,
            training_data=args.training_data,
        )
    )


if __name__ == "__main__":
    raise SystemExit(main())

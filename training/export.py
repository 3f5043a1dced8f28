"""Export a training checkpoint to ONNX with its model card: ``python -m training.export CKPT -o MODEL.onnx``.

The checkpoint's card (classes, colours, normalisation, tile size, metrics, licence) goes into the ONNX
``metadata_props`` through :func:`engine.export.export_onnx`; the export is then checked against torch with
ONNX Runtime on random inputs (largest logit difference and arg-max agreement) and refused when they disagree.
``--int8`` additionally applies ONNX Runtime dynamic int8 weight quantisation (smaller file, faster on some
CPUs; its agreement with float32 is reported, not enforced).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engine.errors import BiCoRSegError, InvalidInputError
from engine.export import check_onnx_parity, export_onnx
from engine.model_card import ModelCard, onnx_metadata_props
from training.checkpoints import load_model
from training.command import run_json_command

__all__ = ["export_checkpoint", "main", "quantize_int8"]

logger = logging.getLogger(__name__)

#: Largest tolerated |torch - onnxruntime| logit difference of a float32 export.
DEFAULT_ATOL = 1e-3
#: Smallest tolerated share of pixels whose arg-max class agrees between torch and the float32 export.
MIN_ARGMAX_AGREEMENT = 0.999


def quantize_int8(source: Path, target: Path, card: ModelCard) -> Path:
    """Dynamic int8 weight quantisation with ONNX Runtime; the card is written into the quantised file again."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)
    proto = onnx.load(str(target))
    del proto.metadata_props[:]
    int8_card = card.replace(description=f"{card.description} (int8 dynamic quantisation)".strip())
    for key, value in onnx_metadata_props(int8_card).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(target))
    return target


def _parity_sizes(card: ModelCard, divisor: int) -> list[tuple[int, int]]:
    # The card's tile (what the engine feeds) plus a small non-square size, to catch baked-in shapes.
    return [(card.tile_size_px, card.tile_size_px), (2 * divisor, 3 * divisor)]


def export_checkpoint(
    checkpoint: Path,
    output: Path,
    int8: bool = False,
    heatmaps: bool = False,
    opset: int = 17,
    atol: float = DEFAULT_ATOL,
    card_json: Path | None = None,
) -> dict[str, Any]:
    """Export, check and optionally quantise one checkpoint.

    Args:
        checkpoint: A checkpoint written by ``training.train`` (or any ``{"state_dict", "model_card"}`` file).
        output: Destination ``.onnx``; with ``int8`` the quantised model goes to ``<stem>.int8.onnx`` beside it.
        int8: Also write a dynamically quantised copy.
        heatmaps: Export the BiCoR-Seg class heatmaps as extra outputs.
        opset: ONNX opset.
        atol: Largest accepted logit difference between torch and ONNX Runtime.
        card_json: Also write the card as a JSON file here.

    Returns:
        A report: paths, sizes and the parity numbers.

    Raises:
        BiCoRSegError: If the float32 export disagrees with torch beyond ``atol`` / the arg-max threshold.
    """
    if output.suffix.lower() != ".onnx":
        raise InvalidInputError(f"Output '{output}' must end in .onnx.")
    model, card = load_model(checkpoint, "cpu")
    export_onnx(model, card, output, opset=opset, heatmaps=heatmaps)
    divisor = max(int(getattr(model, "size_divisor_px", 1)), card.size_divisor_px)
    parity = check_onnx_parity(model, output, _parity_sizes(card, divisor))
    if parity["max_abs_diff"] > atol or parity["argmax_agreement"] < MIN_ARGMAX_AGREEMENT:
        output.unlink(missing_ok=True)
        raise BiCoRSegError(
            f"The ONNX export disagrees with torch (max |diff| {parity['max_abs_diff']:.2e} > {atol:g} or arg-max "
            f"agreement {parity['argmax_agreement']:.4f} < {MIN_ARGMAX_AGREEMENT}); the file was removed. "
            "Try another --opset or report the model."
        )
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
        quantize_int8(output, int8_path, card)
        int8_parity = check_onnx_parity(model, int8_path, _parity_sizes(card, divisor))
        report.update({"int8_onnx": str(int8_path), "int8_onnx_mb": round(int8_path.stat().st_size / 2**20, 2),
                       "int8_parity": int8_parity})  # fmt: skip
    if card_json is not None:
        card_json.write_text(json.dumps(card.to_dict(), indent=2), encoding="utf-8")
        report["card_json"] = str(card_json)
    return report


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.export", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="checkpoint written by training.train (e.g. runs/NAME/best.pt)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="destination .onnx file")
    parser.add_argument("--int8", action="store_true", help="also write <stem>.int8.onnx (dynamic int8 weights)")
    parser.add_argument("--heatmaps", action="store_true", help="export BiCoR-Seg class heatmaps as extra outputs")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    parser.add_argument("--atol", type=float, default=DEFAULT_ATOL, help="largest accepted logit difference")
    parser.add_argument("--card-json", type=Path, default=None, help="also write the model card as JSON here")
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
        )
    )


if __name__ == "__main__":
    raise SystemExit(main())

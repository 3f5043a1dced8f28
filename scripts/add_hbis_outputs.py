"""Give an exported BiCoR-Seg ONNX file its HBIS heatmap outputs (``heatmap_0`` ..), without re-exporting it.

The embedded default model (``resources/models/default.onnx``) ships as ONNX only: its checkpoint is not in the
repository, so it cannot be re-exported with ``--heatmaps``. Its HBIS heatmap logits are computed inside the graph
anyway (each layer's class softmax reads them); :func:`engine.export.add_hbis_outputs` names them and declares them
as outputs, adding and changing no node, so the logits are computed exactly as before.

``--verify`` (needs torch) checks the result three ways and prints a JSON report:

1. **graph**: a fresh export of the card's architecture (random, perturbed weights so that no two initializers are
   equal, ``heatmaps=True``) has the same nodes (names, op types, wiring, attributes), initializer names and shapes
   and outputs as the modified file; the constants that differ are listed (the default model was exported with the
   upsampler LayerNorm eps 1e-5, today's code has 1e-6);
2. **torch**: a torch model built from the file's own initializers (each state-dict tensor located in the fresh
   export by value, then taken from the file under the same name) gives the same logits and heatmaps as ONNX
   Runtime on the modified file;
3. **logits**: ONNX Runtime gives bit-identical logits before and after, on random tiles.

Without ``--verify`` (quantised files, whose graphs differ from a float export), check 3 is made, and with
``--reference FP32.onnx`` the heatmaps are compared with the float model's.

Usage: python scripts/add_hbis_outputs.py resources/models/default.onnx [-o OUT.onnx] [--verify]
       python scripts/add_hbis_outputs.py resources/models/default.int8.onnx --reference resources/models/default.onnx
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np


def _graph_signature(proto: Any) -> list[tuple[Any, ...]]:
    from onnx import helper

    return [
        (n.name, n.op_type, tuple(n.input), tuple(n.output),
         tuple((a.name, str(helper.get_attribute_value(a))) for a in n.attribute if n.op_type != "Constant"))
        for n in proto.graph.node
    ]  # fmt: skip


def _constants(proto: Any) -> dict[str, Any]:
    from onnx import numpy_helper

    return {
        n.name: numpy_helper.to_array(n.attribute[0].t)
        for n in proto.graph.node
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"
    }


def _fresh_export(card: Any, folder: Path) -> tuple[Any, Any, Any]:
    """(torch model, its state dict as numpy, ONNX proto) of a randomly initialised model exported with heatmaps."""
    import onnx
    import torch

    from engine.export import export_onnx
    from engine.models import create_model

    torch.manual_seed(0)
    model = create_model(card.architecture, num_classes=card.num_classes, **dict(card.architecture_args)).eval()
    with torch.no_grad():  # distinct values everywhere: the exporter shares equal initializers otherwise
        for parameter in model.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    path = export_onnx(model, card, folder / "fresh.onnx", heatmaps=True)
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    return model, state, onnx.load(str(path))


def _locate(state: dict[str, Any], fresh: Any) -> dict[str, tuple[str, str]]:
    """State-dict key -> (initializer name, "same" | "T" | "reshape") in the fresh export, found by value."""
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in fresh.graph.initializer}
    found: dict[str, tuple[str, str]] = {}
    for key, tensor in state.items():
        for name, array in inits.items():
            if array.size != tensor.size:
                continue
            if array.shape == tensor.shape and np.array_equal(array, tensor):
                found[key] = (name, "same")
            elif array.ndim == tensor.ndim == 2 and np.array_equal(array, tensor.T):
                found[key] = (name, "T")
            elif np.array_equal(array.reshape(-1), tensor.reshape(-1)):
                found[key] = (name, "reshape")
            if key in found:
                break
    return found


def verify(original: Any, modified: Any, modified_bytes: bytes, card: Any) -> dict[str, Any]:
    """The three checks of the module docstring; returns the report (raises SystemExit when one fails)."""
    import onnxruntime as ort
    import torch
    from onnx import numpy_helper

    from engine.export import OUTPUT_NAME, heatmap_output_name

    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as folder:
        model, state, fresh = _fresh_export(card, Path(folder))
    same_graph = _graph_signature(fresh) == _graph_signature(modified)
    same_inits = [(i.name, tuple(i.dims)) for i in fresh.graph.initializer] == [
        (i.name, tuple(i.dims)) for i in modified.graph.initializer
    ]
    same_outputs = [o.name for o in fresh.graph.output] == [o.name for o in modified.graph.output]
    fresh_constants, file_constants = _constants(fresh), _constants(modified)
    differing = {
        name: {"file": file_constants[name].tolist(), "fresh_export": value.tolist()}
        for name, value in fresh_constants.items()
        if not np.array_equal(value, file_constants.get(name))
    }
    report["graph"] = {"same_nodes_and_wiring": same_graph, "same_initializers": same_inits,
                       "same_outputs": same_outputs, "differing_constants": differing}  # fmt: skip
    if not (same_graph and same_inits and same_outputs):
        raise SystemExit(f"error: the graph differs from a fresh export: {json.dumps(report['graph'])}")

    # A torch model holding the file's own weights.
    located = _locate(state, fresh)
    file_inits = {i.name: numpy_helper.to_array(i) for i in modified.graph.initializer}
    weights = {}
    for key, (name, how) in located.items():
        array = file_inits[name]
        weights[key] = torch.from_numpy(np.array(array.T if how == "T" else array.reshape(state[key].shape)))
    unused = sorted(set(state) - set(weights))
    model.load_state_dict(weights, strict=False)
    eps = differing.get("/model/upsampler/norm/Constant_1", {}).get("file")
    if eps is not None:
        model.upsampler.norm.eps = float(eps)
    report["torch"] = {
        "tensors_from_file": len(weights),
        "not_in_graph": unused,
        "upsampler_eps": model.upsampler.norm.eps,
    }

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    before = ort.InferenceSession(original.SerializeToString(), options, providers=["CPUExecutionProvider"])
    after = ort.InferenceSession(modified_bytes, options, providers=["CPUExecutionProvider"])
    names = [o.name for o in after.get_outputs()]
    rng = np.random.default_rng(0)
    worst = {"logits_vs_torch": 0.0, "heatmaps_vs_torch": 0.0}
    identical = True
    for size in ((card.tile_size_px, card.tile_size_px), (64, 96)):
        x = rng.standard_normal((2, card.num_bands, *size)).astype(np.float32)
        (old_logits,) = before.run([OUTPUT_NAME], {"input": x})
        outputs = dict(zip(names, after.run(names, {"input": x}), strict=True))
        identical &= bool(np.array_equal(old_logits, outputs[OUTPUT_NAME]))
        with torch.no_grad():
            expected = model(torch.from_numpy(x))
        worst["logits_vs_torch"] = max(worst["logits_vs_torch"],
                                       float(np.abs(expected.logits.numpy() - outputs[OUTPUT_NAME]).max()))  # fmt: skip
        for i, heat in enumerate(expected.heatmaps):
            got = outputs[heatmap_output_name(i)]
            worst["heatmaps_vs_torch"] = max(worst["heatmaps_vs_torch"], float(np.abs(heat.numpy() - got).max()))
    report["onnxruntime"] = {"logits_bit_identical_before_after": identical, "max_abs_diff": worst}
    if not identical or worst["heatmaps_vs_torch"] > 1e-3 or worst["logits_vs_torch"] > 1e-3:
        raise SystemExit(f"error: verification failed: {json.dumps(report['onnxruntime'])}")
    return report


def compare_logits_and_reference(
    original: Any, modified_bytes: bytes, card: Any, reference: Path | None
) -> dict[str, Any]:
    """Bit-identical logits before/after on random tiles; with ``reference`` (an fp32 file with heatmap outputs),
    the largest difference of the heatmap logits from the reference's (for quantised variants)."""
    import onnxruntime as ort

    from engine.export import OUTPUT_NAME

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    before = ort.InferenceSession(original.SerializeToString(), options, providers=["CPUExecutionProvider"])
    after = ort.InferenceSession(modified_bytes, options, providers=["CPUExecutionProvider"])
    ref = (
        None if reference is None else ort.InferenceSession(str(reference), options, providers=["CPUExecutionProvider"])
    )
    names = [o.name for o in after.get_outputs()]
    rng = np.random.default_rng(0)
    identical, worst, agreement = True, 0.0, 1.0
    x = rng.standard_normal((2, card.num_bands, card.tile_size_px, card.tile_size_px)).astype(np.float32)
    (old_logits,) = before.run([OUTPUT_NAME], {"input": x})
    outputs = dict(zip(names, after.run(names, {"input": x}), strict=True))
    identical = bool(np.array_equal(old_logits, outputs[OUTPUT_NAME]))
    if ref is not None:
        expected = dict(zip(names, ref.run(names, {"input": x}), strict=True))
        for name in names[1:]:
            worst = max(worst, float(np.abs(expected[name] - outputs[name]).max()))
            agreement = min(agreement, float(np.mean(expected[name].argmax(1) == outputs[name].argmax(1))))
    report: dict[str, Any] = {"logits_bit_identical_before_after": identical}
    if ref is not None:
        report["heatmap_logits_vs_reference"] = {"max_abs_diff": worst, "argmax_agreement": agreement}
    if not identical:
        raise SystemExit(f"error: the logits changed: {json.dumps(report)}")
    return report


def main(argv: list[str] | None = None) -> int:
    """Add the outputs, optionally verify, and write the file atomically."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="BiCoR-Seg .onnx exported by engine.export")
    parser.add_argument("-o", "--output", type=Path, help="where to write (default: replace MODEL)")
    parser.add_argument("--verify", action="store_true", help="check against torch and a fresh export (needs torch)")
    parser.add_argument(
        "--reference", type=Path, help="for a quantised file: compare its heatmaps with this fp32 file's (no torch)"
    )
    args = parser.parse_args(argv)
    import onnx

    from engine.export import add_hbis_outputs
    from engine.model_card import read_card

    card = read_card(args.model)
    size_before = args.model.stat().st_size
    original = onnx.load(str(args.model))
    modified = onnx.load(str(args.model))
    count = add_hbis_outputs(modified, card.num_classes)
    if count == 0:
        raise SystemExit(f"error: '{args.model}' has no HBIS layers (no /model/layers.<i>/Softmax node).")
    onnx.checker.check_model(modified)
    data = modified.SerializeToString()
    report: dict[str, Any] = {"model": str(args.model), "heatmap_outputs": count}
    if args.verify:
        report.update(verify(original, modified, data, card))
    else:
        report["onnxruntime"] = compare_logits_and_reference(original, data, card, args.reference)
    output = args.output or args.model
    fd, temp = tempfile.mkstemp(suffix=".onnx.tmp", dir=output.parent)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(temp, 0o644)
    os.replace(temp, output)
    report["written"] = str(output)
    report["bytes"] = {"before": size_before, "after": output.stat().st_size}
    sys.stdout.write(json.dumps(report, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

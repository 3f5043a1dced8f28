"""The one way an ONNX export of an engine model becomes a torch model again (for fine-tuning an ``.onnx`` file).

The embedded default model ships as ONNX only (a torch checkpoint beside it would not fit the plugin zip's 25 MB),
and the ONNX files that fine-tuning writes are what users keep. Their weights are all in the graph's initializers,
but the exporter renames some of them (a ``Linear`` weight becomes a transposed ``onnx::MatMul_913``, a channel
norm's weight a reshaped ``onnx::Mul_910``), so names alone cannot put them back.

:func:`model_from_onnx` therefore exports the same architecture once more, in memory, with every weight filled with
its own random values, and recognises each of those values in that reference export's initializers (as they are,
reshaped, or transposed). Both exports come from the same code, so their graphs have the same nodes; each
initializer of the file is paired with the reference's initializer at the same node input and copied back into the
weight it came from, with the same reshape or transpose undone. Weights that the inference graph does not use (training-only
heads, e.g. BiCoR-Seg's ``aux_classifier``) keep the architecture's initialisation and are reported.

The result is then checked the way an export is (:func:`engine.export.check_onnx_parity`): the rebuilt torch model
must give the file's logits (ONNX Runtime) on random inputs, else :class:`~engine.errors.ModelLoadError` says to give
the torch checkpoint instead (e.g. for batch-norm layers, which the exporter folds into convolutions).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from ..errors import ModelLoadError
from ..model_card import ModelCard
from .from_checkpoint import build_model

if TYPE_CHECKING:
    from torch import nn

__all__ = ["OnnxRecovery", "model_from_onnx"]

logger = logging.getLogger(__name__)

#: Largest tolerated |torch - onnxruntime| logit difference of the rebuilt model (the export check's tolerance).
RECOVERY_ATOL = 1e-3
#: Number of leading values that identify a filled weight (random normal float32: collisions are not a concern).
_FINGERPRINT_VALUES = 4


@dataclass(frozen=True)
class OnnxRecovery:
    """How the weights of an ONNX file went back into the torch model.

    Attributes:
        recovered: State-dict keys whose values came from the file.
        not_in_graph: Keys the inference graph does not use (kept at the architecture's initialisation).
        max_abs_diff: Largest logit difference between the rebuilt model and the file (ONNX Runtime).
    """

    recovered: tuple[str, ...]
    not_in_graph: tuple[str, ...]
    max_abs_diff: float


def model_from_onnx(path: str | Path, card: ModelCard) -> tuple[nn.Module, OnnxRecovery]:
    """Rebuild the torch model of an ONNX file that :mod:`engine.export` wrote for an engine architecture.

    Args:
        path: The ``.onnx`` file (float32; int8-quantised files cannot be rebuilt).
        card: Its model card (architecture, arguments, classes, bands).

    Returns:
        ``(model in eval mode on the CPU, what was recovered)``.

    Raises:
        ModelLoadError: If the card's architecture cannot be built, the file's graph is not an export of it, or the
            rebuilt model does not reproduce the file's logits; the message says what to give instead.
    """
    import onnx
    import torch
    from onnx import numpy_helper

    from ..export import check_onnx_parity, export_onnx, parity_sizes

    path = Path(path)
    source = path.name
    fix = f"give the torch checkpoint (.pt) of '{source}' instead"
    try:
        proto = onnx.load(str(path))
    except Exception as exc:  # protobuf raises a zoo of types on corrupt files
        raise ModelLoadError(f"Cannot read ONNX model '{path}': {exc}. Is the file complete?") from exc
    if any(
        node.op_type in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear") for node in proto.graph.node
    ):
        raise ModelLoadError(
            f"'{source}' is an int8-quantised model, whose weights cannot be trained further; use its float32 "
            "file (e.g. default.onnx, not default.int8.onnx) or the torch checkpoint."
        )
    target = build_model(card, source)
    reference = build_model(card, source)
    _fill_distinct(reference, seed=0)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 17)
    heatmaps = len(proto.graph.output) > 1
    with tempfile.TemporaryDirectory(prefix="bicorseg-onnx-") as scratch:
        reference_path = Path(scratch) / "reference.onnx"
        export_onnx(reference, card, reference_path, opset=opset, heatmaps=heatmaps)
        reference_proto = onnx.load(str(reference_path))

    weights = {k: v.detach().cpu().numpy() for k, v in reference.state_dict().items() if v.is_floating_point()}
    origins = _identify(reference_proto, weights)
    pairs = _pair_initializers(reference_proto, proto)
    if pairs is None:
        raise ModelLoadError(
            f"The graph of '{source}' is not an export of architecture '{card.architecture}' with "
            f"{dict(card.architecture_args)} by this engine (its weights differ in number or shape); {fix}."
        )
    file_arrays = {init.name: init for init in proto.graph.initializer}
    state = target.state_dict()
    recovered: list[str] = []
    for reference_name, file_name in pairs.items():
        origin = origins.get(reference_name)
        if origin is None or origin[0] in recovered:
            continue
        key, transposed = origin
        array = numpy_helper.to_array(file_arrays[file_name])
        array = array.T if transposed else array
        state[key] = torch.from_numpy(np.ascontiguousarray(array).reshape(tuple(state[key].shape)).copy())
        recovered.append(key)
    target.load_state_dict(state, strict=True)
    target.eval()
    not_in_graph = tuple(k for k in weights if k not in recovered)
    divisor = max(int(getattr(target, "size_divisor_px", 1)), card.size_divisor_px)
    parity = check_onnx_parity(target, path, parity_sizes(card, divisor))
    if parity["max_abs_diff"] > RECOVERY_ATOL:
        raise ModelLoadError(
            f"The torch model rebuilt from '{source}' does not reproduce its logits (max |diff| "
            f"{parity['max_abs_diff']:.2e} > {RECOVERY_ATOL:g}; weights not found in the graph: "
            f"{', '.join(not_in_graph[:4]) or 'none'}{'...' if len(not_in_graph) > 4 else ''}); {fix}."
        )
    if not_in_graph:
        logger.info("%s: %d weight(s) are not used by the inference graph and start fresh: %s.",
                    source, len(not_in_graph), ", ".join(not_in_graph))  # fmt: skip
    return target, OnnxRecovery(tuple(recovered), not_in_graph, float(parity["max_abs_diff"]))


def _fill_distinct(model: nn.Module, seed: int) -> None:
    """Give every floating weight its own random normal values, so each one is recognisable in an export."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype))


def _fingerprint(values: NDArray[Any]) -> bytes:
    return np.ascontiguousarray(values.reshape(-1)[:_FINGERPRINT_VALUES], dtype=np.float32).tobytes()


def _identify(proto: Any, weights: Mapping[str, NDArray[Any]]) -> dict[str, tuple[str, bool]]:
    """Initializer name -> (state-dict key, stored transposed) for every initializer that is one weight's values."""
    from onnx import numpy_helper

    by_print: dict[bytes, list[str]] = {}
    for key, value in weights.items():
        by_print.setdefault(_fingerprint(value), []).append(key)
    origins: dict[str, tuple[str, bool]] = {}
    for init in proto.graph.initializer:
        array = numpy_helper.to_array(init)
        if array.dtype != np.float32 or array.size == 0:
            continue
        candidates = [(array, False)] + ([(array.T, True)] if array.ndim == 2 else [])
        for candidate, transposed in candidates:
            for key in by_print.get(_fingerprint(candidate), []):
                weight = weights[key]
                if weight.size == candidate.size and np.array_equal(np.ascontiguousarray(candidate).reshape(-1),
                                                                    weight.reshape(-1)):  # fmt: skip
                    origins[init.name] = (key, transposed)
                    break
            if init.name in origins:
                break
    return origins


def _pair_initializers(reference: Any, file: Any) -> dict[str, str] | None:
    """Reference initializer name -> the file's initializer at the same node input, or None when the graphs differ.

    Pairs by node and input slot rather than by initializer: the exporter merges initializers with equal values
    (freshly initialised norms are all ones), so a file can hold fewer initializers than the reference export, whose
    weights are all distinct; the nodes are the same either way.
    """
    our_inits = {init.name: init for init in reference.graph.initializer}
    their_inits = {init.name: init for init in file.graph.initializer}
    ours, theirs = _nodes_with_inputs(reference.graph, our_inits), _nodes_with_inputs(file.graph, their_inits)
    if len(ours) != len(theirs):
        return None
    pairs: dict[str, str] = {}
    for (my_op, my_inputs), (other_op, other_inputs) in zip(ours, theirs, strict=True):
        if my_op != other_op or len(my_inputs) != len(other_inputs):
            return None
        for a, b in zip(my_inputs, other_inputs, strict=True):
            if (a in our_inits) != (b in their_inits):
                return None
            if a not in our_inits:
                continue
            ref_init, file_init = our_inits[a], their_inits[b]
            if tuple(ref_init.dims) != tuple(file_init.dims) or ref_init.data_type != file_init.data_type:
                return None
            if pairs.setdefault(a, b) != b:
                return None
    return pairs


def _nodes_with_inputs(graph: Any, initializers: Mapping[str, Any]) -> list[tuple[str, list[str]]]:
    """(op type, inputs) of every node, with ``Identity`` nodes of initializers resolved to the initializer."""
    alias = {node.output[0]: node.input[0] for node in graph.node
             if node.op_type == "Identity" and node.input and node.input[0] in initializers}  # fmt: skip
    return [
        (node.op_type, [alias.get(name, name) for name in node.input])
        for node in graph.node
        if not (node.op_type == "Identity" and node.output and node.output[0] in alias)
    ]

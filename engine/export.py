"""Export a segmentation model to ONNX with its model card, and check the export against torch.

The ONNX file has one input ``"input"`` (B, C, H, W) float32 and the output ``"logits"`` (B, K, H, W), with
dynamic batch, height and width; with ``heatmaps=True`` models that return class heatmaps (BiCoR-Seg) get extra
outputs ``"heatmap_0"``, ``"heatmap_1"``, ... The card (plus Deepness-compatible keys) goes into
``metadata_props``; its ``weights_sha256`` is the checksum of the exported state dict.

Uses the TorchScript-based exporter (``dynamo=False``): the torch.export-based one needs ``onnxscript``, which is
not a dependency of this project. torch is imported lazily, so importing this module costs nothing.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import InvalidInputError, ModelLoadError, OutputPathError
from .model_card import ModelCard, embed_card

if TYPE_CHECKING:
    from torch import Tensor, nn

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_ATOL",
    "INPUT_NAME",
    "MIN_ARGMAX_AGREEMENT",
    "OUTPUT_NAME",
    "add_hbis_outputs",
    "check_onnx_parity",
    "export_checked",
    "export_checkpoint_file",
    "export_onnx",
    "heatmap_output_name",
    "parity_sizes",
    "state_dict_sha256",
]

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
#: Name of HBIS layer i's heatmap output is ``HEATMAP_OUTPUT_PREFIX + str(i)`` (``heatmap_0``, ``heatmap_1``, ...).
HEATMAP_OUTPUT_PREFIX = "heatmap_"
#: Largest tolerated |torch - onnxruntime| logit difference of a float32 export.
DEFAULT_ATOL = 1e-3
#: Smallest tolerated share of pixels whose arg-max class agrees between torch and the float32 export.
MIN_ARGMAX_AGREEMENT = 0.999
#: Edge of the dummy input used for tracing; a multiple of every model's size divisor in this project.
_TRACE_SIZE_PX = 64


def heatmap_output_name(layer: int) -> str:
    """The ONNX output holding HBIS layer ``layer``'s heatmap logits (B, K, h, w): ``heatmap_<layer>``."""
    return f"{HEATMAP_OUTPUT_PREFIX}{layer}"


def state_dict_sha256(model: nn.Module) -> str:
    """SHA-256 over the model's state dict: every entry's name, dtype, shape and bytes, in key order.

    Independent of how the weights are later serialised, so a checkpoint and its ONNX export share the value.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        array = tensor.detach().cpu().contiguous().numpy()
        digest.update(f"{name}|{array.dtype.str}|{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _trace_size(divisor_px: int) -> int:
    return max(divisor_px, -(-_TRACE_SIZE_PX // divisor_px) * divisor_px)


def _logits_wrapper(model: nn.Module, num_heatmaps: int) -> nn.Module:
    """Module returning plain tensors (logits, then heatmaps) instead of ``SegmentationOutput``, for tracing."""
    import torch  # lazily: nn.Module subclasses need torch when the class statement runs

    class LogitsWrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: Tensor) -> tuple[Tensor, ...]:
            out = self.model(x)
            return (out.logits, *out.heatmaps[:num_heatmaps])

    return LogitsWrapper()


def export_onnx(model: nn.Module, card: ModelCard, path: str | Path, opset: int = 17, heatmaps: bool = False) -> Path:
    """Export ``model`` (in eval mode) to an ONNX file carrying ``card``.

    The file is written to a temporary path next to ``path`` and moved into place only when complete. The model is
    left in the train/eval mode it came in.

    Args:
        model: A model from :mod:`engine.models` (returns ``SegmentationOutput``).
        card: Its model card; ``weights_sha256`` is replaced by :func:`state_dict_sha256` of the model.
        path: Destination ``.onnx`` path.
        opset: ONNX opset version.
        heatmaps: Also export the model's class heatmaps as outputs ``heatmap_<i>`` (if it has any).

    Returns:
        The written path.

    Raises:
        InvalidInputError: If the card does not match the model (band or class count).
        OutputPathError: If the destination cannot be written.
    """
    import onnx
    import torch

    path = Path(path)
    in_channels = int(getattr(model, "in_channels", card.num_bands))
    if in_channels != card.num_bands:
        raise InvalidInputError(
            f"The card lists {card.num_bands} input bands but the model takes {in_channels}; fix the card's "
            "input_bands."
        )
    divisor = math.lcm(int(getattr(model, "size_divisor_px", 1)), card.size_divisor_px)
    size = _trace_size(divisor)
    was_training = model.training
    model.eval()
    try:
        example = torch.randn(1, in_channels, size, size, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            probe = model(example)
        if probe.logits.shape[1] != card.num_classes:
            raise InvalidInputError(
                f"The model outputs {probe.logits.shape[1]} classes but the card names {card.num_classes}; "
                "fix the card's class_names."
            )
        num_heatmaps = len(probe.heatmaps) if heatmaps else 0
        output_names = [OUTPUT_NAME] + [heatmap_output_name(i) for i in range(num_heatmaps)]
        dynamic_axes = {name: {0: "batch", 2: "height", 3: "width"} for name in [INPUT_NAME, *output_names]}
        for i in range(num_heatmaps):  # heatmaps live at their layer's resolution, not the input's
            name = heatmap_output_name(i)
            dynamic_axes[name] = {0: "batch", 2: f"{name}_height", 3: f"{name}_width"}
        wrapper = _logits_wrapper(model, num_heatmaps)
        card = card.replace(weights_sha256=state_dict_sha256(model))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(suffix=".onnx.tmp", dir=path.parent)
        except OSError as exc:
            raise OutputPathError(f"Cannot write ONNX model to '{path}': {exc}; choose a writable folder.") from exc
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            with warnings.catch_warnings():
                # The exporter warns that it is the legacy one and about traced shape arithmetic; both are expected.
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    wrapper,
                    (example,),
                    str(tmp),
                    input_names=[INPUT_NAME],
                    output_names=output_names,
                    dynamic_axes=dynamic_axes,
                    opset_version=opset,
                    do_constant_folding=True,
                    dynamo=False,
                )
            proto = onnx.load(str(tmp))
            embed_card(proto, card)
            proto.doc_string = f"{card.name} ({card.architecture}), exported by bicorseg engine.export"
            onnx.save(proto, str(tmp))
            # mkstemp creates the file readable by its owner only; give it the usual permissions before moving.
            os.chmod(tmp, _default_file_mode())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    finally:
        model.train(was_training)
    logger.info("Exported %s to %s (opset %d, %d heatmap outputs)", card.architecture, path, opset, num_heatmaps)
    return path


def add_hbis_outputs(proto: Any, num_classes: int) -> int:
    """Expose the HBIS heatmap logits already computed inside an exported BiCoR-Seg graph as ``heatmap_<i>`` outputs.

    For an ONNX file exported without ``heatmaps=True``: the tensors exist in the graph, unnamed. HBIS layer i's
    heatmap logits are the input of its class softmax, the node ``/model/layers.<i>/Softmax`` (H_soft =
    softmax(S / tau) over classes, axis 1) that :func:`export_onnx` names after the module path. The tensor is
    renamed ``heatmap_<i>`` and declared as an output (B, K, h, w), exactly as a fresh export with
    ``heatmaps=True`` names it; no node is added or changed, so the logits are computed as before.

    Args:
        proto: The ``onnx.ModelProto``, changed in place.
        num_classes: K, for the declared output shape.

    Returns:
        The number of heatmap outputs the graph has afterwards (0 if it has no HBIS layers).

    Raises:
        ModelLoadError: If a layer's softmax is not over the classes (not the graph this function knows).
    """
    from onnx import TensorProto, helper

    graph = proto.graph
    outputs = {o.name for o in graph.output}
    nodes = {node.name: node for node in graph.node}
    layer = 0
    while (softmax := nodes.get(f"/model/layers.{layer}/Softmax")) is not None:
        name = heatmap_output_name(layer)
        if name not in outputs:
            axis = next((helper.get_attribute_value(a) for a in softmax.attribute if a.name == "axis"), -1)
            if softmax.op_type != "Softmax" or axis != 1 or len(softmax.input) != 1:
                raise ModelLoadError(
                    f"Node {softmax.name} is not the HBIS class softmax (op {softmax.op_type}, axis {axis}); this "
                    "graph was not exported by engine.export. Re-export the checkpoint with heatmaps instead."
                )
            _rename_tensor(graph, softmax.input[0], name)
            dims: list[str | int | None] = ["batch", num_classes, f"{name}_height", f"{name}_width"]
            graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, dims))
        layer += 1
    return layer


def _rename_tensor(graph: Any, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
    kept = [info for info in graph.value_info if info.name != old]  # the new output declares the tensor
    del graph.value_info[:]
    graph.value_info.extend(kept)


def _default_file_mode() -> int:
    """Permissions a newly created file gets under the process umask (0o644 under the usual 022)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def check_onnx_parity(
    model: nn.Module, onnx_path: str | Path, sizes: Sequence[tuple[int, int]], batch_size: int = 1, seed: int = 0
) -> dict[str, Any]:
    """Compare the ONNX Runtime (CPU) logits with torch's on random inputs of the given sizes.

    Args:
        model: The torch model that was exported (evaluated in eval mode; its mode is restored).
        onnx_path: The exported file.
        sizes: (height, width) pairs to test, each a multiple of the model's size divisor.
        batch_size: Batch size of each random input.
        seed: Seed of the random inputs (standard normal, i.e. already "normalised" imagery).

    Returns:
        ``{"max_abs_diff": float, "argmax_agreement": float, "per_size": {"HxW": {...}}}``: the worst logit
        difference and the lowest fraction of pixels whose arg-max class agrees, over all sizes.
    """
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    in_channels = int(getattr(model, "in_channels", 3))
    generator = torch.Generator().manual_seed(seed)
    per_size: dict[str, dict[str, float]] = {}
    was_training = model.training
    model.eval()
    try:
        for height, width in sizes:
            x = torch.randn(batch_size, in_channels, height, width, generator=generator)
            with torch.no_grad():
                expected = model(x).logits.numpy()
            got = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
            agreement = float(np.mean(expected.argmax(axis=1) == got.argmax(axis=1)))
            per_size[f"{height}x{width}"] = {
                "max_abs_diff": float(np.max(np.abs(expected - got))),
                "argmax_agreement": agreement,
            }
    finally:
        model.train(was_training)
    return {
        "max_abs_diff": max(v["max_abs_diff"] for v in per_size.values()),
        "argmax_agreement": min(v["argmax_agreement"] for v in per_size.values()),
        "per_size": per_size,
    }


def parity_sizes(card: ModelCard, divisor_px: int) -> list[tuple[int, int]]:
    """Input sizes an export is checked at: the card's tile (what the engine feeds) and a small non-square size."""
    # The non-square size catches shapes baked into the graph at trace time.
    return [(card.tile_size_px, card.tile_size_px), (2 * divisor_px, 3 * divisor_px)]


def export_checked(
    model: nn.Module,
    card: ModelCard,
    path: str | Path,
    opset: int = 17,
    heatmaps: bool = False,
    atol: float = DEFAULT_ATOL,
) -> dict[str, Any]:
    """Export with :func:`export_onnx`, then refuse (and remove) a file that disagrees with torch.

    Returns:
        The parity report of :func:`check_onnx_parity`.

    Raises:
        ModelLoadError: If the largest logit difference exceeds ``atol`` or the arg-max agreement is below
            :data:`MIN_ARGMAX_AGREEMENT`; nothing is left at ``path``.
    """
    path = Path(path)
    export_onnx(model, card, path, opset=opset, heatmaps=heatmaps)
    divisor = max(int(getattr(model, "size_divisor_px", 1)), card.size_divisor_px)
    parity = check_onnx_parity(model, path, parity_sizes(card, divisor))
    if parity["max_abs_diff"] > atol or parity["argmax_agreement"] < MIN_ARGMAX_AGREEMENT:
        path.unlink(missing_ok=True)
        raise ModelLoadError(
            f"The ONNX export disagrees with torch (max |diff| {parity['max_abs_diff']:.2e} > {atol:g} or arg-max "
            f"agreement {parity['argmax_agreement']:.4f} < {MIN_ARGMAX_AGREEMENT}); the file was removed. "
            "Try another opset or report the model."
        )
    return parity


def export_checkpoint_file(
    checkpoint: str | Path, path: str | Path, opset: int = 17, heatmaps: bool = False, atol: float = DEFAULT_ATOL
) -> tuple[Path, ModelCard, dict[str, Any]]:
    """Open a torch checkpoint once, rebuild its model and export it, checked against torch.

    Returns:
        ``(written path, card, parity report)``.

    Raises:
        ModelLoadError: If the checkpoint is not a model this engine can build, or the export disagrees.
        ModelCardError: If it carries no valid card.
    """
    from .model_file import ModelFile
    from .models.from_checkpoint import model_from_checkpoint

    model_file = ModelFile.open(checkpoint)
    if model_file.kind != "torch":
        raise InvalidInputError(f"'{model_file.path.name}' is already an ONNX model; give a torch checkpoint (.pt).")
    model = model_from_checkpoint(model_file.checkpoint, model_file.card, model_file.path.name)
    parity = export_checked(model, model_file.card, path, opset=opset, heatmaps=heatmaps, atol=atol)
    return Path(path), model_file.card, parity

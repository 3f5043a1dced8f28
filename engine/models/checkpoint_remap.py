"""Load checkpoints saved in the BiCoR-Seg authors' state-dict layout into :class:`~engine.models.bicorseg.BiCoRSeg`.

Paper: Jinghao Shi et al., "BiCoR-Seg: Bidirectional Co-Refinement Framework for High-Resolution Remote Sensing
Image Segmentation", Computational Visual Media 2026 (arXiv:2512.20255).

Clean-room note: the authors' repository has no licence, so no code was taken from it. Its model file
(``network/models/bicor.py``, class ``BiCoRSegModel``) was *read* for its module names and tensor shapes only,
which are facts about their checkpoints. Their network keeps torchvision's ConvNeXt as
``encoder = Sequential(features, avgpool)``, per-scale ``FeatureProjector`` modules (one ``nn.Linear`` named
``proj``), a 1x1 ``feature_aggregator`` and a ``decoder`` holding the class dictionary (an ``nn.Embedding``), the
HBIS stack, the upsampler and the two classifiers. With E the embedding width, N classes, c_s the encoder width
of scale s and l an HBIS layer (ConvNeXt-Base, N = 6, E = 256, L = 3 gives 408 tensors):

===================================================  =======================  ==================================
authors' key                                         shape                    ours
===================================================  =======================  ==================================
``encoder.0.<torchvision features key>``             e.g. ``encoder.0.1.0``   ``encoder.<native key>``
                                                     ``.block.0.weight``
``proj_layers.{s}.proj.weight`` / ``.bias``          (E, c_s) Linear / (E,)   ``projectors.{s}.*`` (1x1 conv)
``feature_aggregator.weight``                        (E, 4E, 1, 1)            ``fuse.weight``
``decoder.class_dict.class_embed.weight``            (N, E) Embedding         ``class_embed``
``decoder.bicor_stack.layers.{l}.dict_ln.*``         (E,) LayerNorm of CE     ``layers.{l}.norm_embed.*``
``decoder.bicor_stack.layers.{l}.feat_ln.*``         (E,) LayerNorm of F      ``layers.{l}.norm_feat.*``
``decoder.bicor_stack.layers.{l}.dict_to_feat``      (E, E) Linear, no bias   ``layers.{l}.query.weight``
``decoder.bicor_stack.layers.{l}.feat_to_dict``      (E, E, 1, 1), no bias    ``layers.{l}.value.weight``
``decoder.bicor_stack.layers.{l}.gate_mlp.{0,2}.*``  Linear 2E->E, E->E       ``layers.{l}.gate.{0,2}.*``
``decoder.bicor_stack.layers.{l}.cand_mlp.{0,2}.*``  Linear E->E twice        ``layers.{l}.candidate.{0,2}.*``
``decoder.bicor_stack.layers.{l}.gamma_proj.*``      Linear E->E              ``layers.{l}.film_gamma.*``
``decoder.bicor_stack.layers.{l}.beta_proj.*``       Linear E->E              ``layers.{l}.film_beta.*``
``decoder.upsampler.1.*``                            (E/4,) LayerNorm2d       ``upsampler.norm.*``
``decoder.classifier_proj.weight``                   (E/16, E)                ``classifier.weight``
``decoder.static_classifier.weight``                 (E/16, E)                ``aux_classifier.weight``
===================================================  =======================  ==================================

The authors' gate MLP ends in an ``nn.Sigmoid`` at index 3 (no weights); ours applies the sigmoid outside the
``Sequential``, so indices 0 and 2 line up. Their upsampler's LayerNorm2d uses eps 1e-6 and their HBIS
LayerNorms torch's default 1e-5, as ours do. When a checkpoint uses yet other names, pass ``extra_renames``
(regex -> replacement, applied first, turning their names into the ones above); the report lists exactly which
keys were not understood.

Tensors whose element count matches but whose shape differs (Linear vs 1x1 conv) are reshaped. Lightning / DDP
wrappers (``net.``, ``model.``, ``module.``) are stripped first, since the code base descends from GeoSeg, whose
training module stores the network as ``net``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor, nn

from ..errors import ModelLoadError
from .base import strip_wrapper_prefixes
from .convnext import detect_convnext_layout, read_state_dict, rename_convnext_key

__all__ = ["AUTHORS_LAYOUT", "RemapReport", "load_original_checkpoint", "remap_original_checkpoint"]

logger = logging.getLogger(__name__)

_HBIS = r"^decoder\.bicor_stack\.layers\.(\d+)"
#: (regex on the authors' key after wrapper stripping, replacement giving our key). First match wins.
AUTHORS_LAYOUT: tuple[tuple[str, str], ...] = (
    (r"^proj_layers\.(\d+)\.proj\.(weight|bias)$", r"projectors.\1.\2"),
    (r"^feature_aggregator\.weight$", r"fuse.weight"),
    (r"^decoder\.class_dict\.class_embed\.weight$", r"class_embed"),
    (_HBIS + r"\.dict_ln\.(weight|bias)$", r"layers.\1.norm_embed.\2"),
    (_HBIS + r"\.feat_ln\.(weight|bias)$", r"layers.\1.norm_feat.\2"),
    (_HBIS + r"\.dict_to_feat\.weight$", r"layers.\1.query.weight"),
    (_HBIS + r"\.feat_to_dict\.weight$", r"layers.\1.value.weight"),
    (_HBIS + r"\.gate_mlp\.([02])\.(weight|bias)$", r"layers.\1.gate.\2.\3"),
    (_HBIS + r"\.cand_mlp\.([02])\.(weight|bias)$", r"layers.\1.candidate.\2.\3"),
    (_HBIS + r"\.gamma_proj\.(weight|bias)$", r"layers.\1.film_gamma.\2"),
    (_HBIS + r"\.beta_proj\.(weight|bias)$", r"layers.\1.film_beta.\2"),
    (r"^decoder\.upsampler\.1\.(weight|bias)$", r"upsampler.norm.\1"),
    (r"^decoder\.classifier_proj\.weight$", r"classifier.weight"),
    (r"^decoder\.static_classifier\.weight$", r"aux_classifier.weight"),
)
_COMPILED = tuple((re.compile(pattern), repl) for pattern, repl in AUTHORS_LAYOUT)
#: ``encoder`` is ``Sequential(convnext.features, convnext.avgpool)``, so the torchvision ``features`` keys sit
#: under ``encoder.0.``; they are handed to the ConvNeXt loader's torchvision rules as ``features.<rest>``.
_BACKBONE = re.compile(r"^encoder\.0\.(.+)$")
_WRAPPERS = ("module.", "model.", "net.")


@dataclass(frozen=True)
class RemapReport:
    """What :func:`load_original_checkpoint` did.

    Attributes:
        loaded_keys: Model keys that received a tensor.
        missing_keys: Model keys the checkpoint did not provide (they keep their current values).
        unexpected_keys: Checkpoint keys (the authors' names) that map to nothing in the model.
        reshaped_keys: Model keys whose tensor was reshaped (same element count, e.g. Linear -> 1x1 conv).
    """

    loaded_keys: tuple[str, ...]
    missing_keys: tuple[str, ...]
    unexpected_keys: tuple[str, ...]
    reshaped_keys: tuple[str, ...]


def _apply_extra(key: str, extra: tuple[tuple[re.Pattern[str], str], ...]) -> str:
    for pattern, repl in extra:
        key = pattern.sub(repl, key)
    return key


def remap_original_checkpoint(
    state_dict: Mapping[str, Tensor], extra_renames: Mapping[str, str] | None = None
) -> tuple[dict[str, Tensor], dict[str, str], list[str]]:
    """Rename an authors'-layout state dict to this project's :class:`BiCoRSeg` names.

    Args:
        state_dict: The authors' tensors (wrappers ``net.`` / ``model.`` / ``module.`` are stripped).
        extra_renames: Regex -> replacement pairs applied to every key first (``re.sub``), to adapt a
            checkpoint whose names differ from the authors' layout.

    Returns:
        ``(renamed, origin, unmatched)``: tensors under our names, our name -> the original key, and the
        original keys that matched no rule.
    """
    extra = tuple((re.compile(p), r) for p, r in (extra_renames or {}).items())
    source = strip_wrapper_prefixes(state_dict, _WRAPPERS)
    renamed: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    unmatched: list[str] = []
    backbone: dict[str, tuple[str, Tensor]] = {}
    for original, value in source.items():
        key = _apply_extra(original, extra)
        match = _BACKBONE.match(key)
        if match:
            backbone[match[1]] = (original, value)
            continue
        for pattern, repl in _COMPILED:
            if pattern.match(key):
                ours = pattern.sub(repl, key)
                renamed[ours], origin[ours] = value, original
                break
        else:
            unmatched.append(original)
    if backbone:
        keys = {f"features.{k}": v for k, v in backbone.items()}
        tensors = {k: v for k, (_, v) in keys.items()}
        layout = detect_convnext_layout(tensors)
        for key, (original, value) in keys.items():
            ours_in_encoder = rename_convnext_key(key, layout)
            if ours_in_encoder is None:
                unmatched.append(original)
            else:
                renamed[f"encoder.{ours_in_encoder}"], origin[f"encoder.{ours_in_encoder}"] = value, original
    return renamed, origin, unmatched


def load_original_checkpoint(
    model: nn.Module,
    checkpoint: str | Path | Mapping[str, Tensor],
    strict: bool = False,
    extra_renames: Mapping[str, str] | None = None,
) -> RemapReport:
    """Load an authors'-layout BiCoR-Seg checkpoint into a :class:`~engine.models.bicorseg.BiCoRSeg`.

    Args:
        model: The model to fill (built with the checkpoint's backbone, E, L and class count).
        checkpoint: A local file (``.pth`` / Lightning ``.ckpt``) or an in-memory state dict.
        strict: Raise when any model key is missing or any checkpoint key is unused.
        extra_renames: See :func:`remap_original_checkpoint`.

    Returns:
        Loaded, missing, unexpected and reshaped keys (also logged).

    Raises:
        ModelLoadError: Unreadable file, a shape that cannot fit (wrong backbone, E, L or class count), or a strict
            failure.
    """
    renamed, origin, unexpected = remap_original_checkpoint(read_state_dict(checkpoint), extra_renames)
    own = model.state_dict()
    to_load: dict[str, Tensor] = {}
    reshaped: list[str] = []
    for key, value in renamed.items():
        if key not in own:
            unexpected.append(origin[key])
            continue
        target = own[key]
        if value.shape != target.shape:
            if value.numel() != target.numel():
                raise ModelLoadError(
                    f"Checkpoint tensor '{origin[key]}' has shape {tuple(value.shape)} but the model's '{key}' is "
                    f"{tuple(target.shape)}; build the model with the checkpoint's backbone, embed_dim, "
                    "num_layers and num_classes."
                )
            value = value.reshape(target.shape)
            reshaped.append(key)
        to_load[key] = value.to(dtype=target.dtype)
    missing = sorted(set(own) - set(to_load))
    unexpected.sort()
    if strict and (missing or unexpected):
        raise ModelLoadError(
            f"Checkpoint does not fit the model: {len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} "
            f"unexpected (e.g. {unexpected[:3]}); pass extra_renames for renamed keys or strict=False."
        )
    model.load_state_dict(to_load, strict=False)
    if missing:
        logger.warning("Authors' checkpoint left %d model keys unset: %s", len(missing), missing[:10])
    if unexpected:
        logger.warning("Authors' checkpoint has %d keys not understood: %s", len(unexpected), unexpected[:10])
    logger.info("Loaded %d tensors from the authors' layout (%d reshaped).", len(to_load), len(reshaped))
    return RemapReport(tuple(sorted(to_load)), tuple(missing), tuple(unexpected), tuple(sorted(reshaped)))

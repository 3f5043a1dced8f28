"""Load checkpoints saved in the BiCoR-Seg authors' state-dict layout into :class:`~engine.models.bicorseg.BiCoRSeg`.

Paper: Jinghao Shi et al., "BiCoR-Seg: Bidirectional Co-Refinement Framework for High-Resolution Remote Sensing
Image Segmentation", Computational Visual Media 2026 (arXiv:2512.20255).

Clean-room note and ASSUMPTION: the authors' repository (no licence) was not read for this module. The project's
spec describes their model's *structure* (torchvision ConvNeXt ``features`` as encoder; per-scale projectors; a 1x1
fusion conv; the class table CE0; per HBIS layer LN_d, LN_f, W_q, V, MLP_g, MLP_c, W_gamma, W_beta; an upsampler with
one LayerNorm; two E -> E/16 classifiers) but not its exact key names. The layout below is therefore *inferred*
from those names and from the spec's notation, and each of our modules accepts a few plausible spellings
(:data:`AUTHORS_LAYOUT`). When a real checkpoint uses other names, pass ``extra_renames`` (regex -> replacement,
applied first, turning their names into one of the accepted spellings) instead of editing this module; the report
lists exactly which keys were not understood. Assumed layout, with E = 256, N classes, s = scale, l = layer:

=======================================  ==========================================  ==========================
authors' key (assumed)                   shape                                       ours
=======================================  ==========================================  ==========================
``backbone.<torchvision features key>``  e.g. ``backbone.1.0.block.0.weight``        ``encoder.<native key>``
``projs.{s}.weight`` / ``.bias``          (E, c_s) Linear / (E,)                      ``projectors.{s}.*``
``fuse.weight``                          (E, 4E, 1, 1)                               ``fuse.weight``
``ce0``                                  (N, E)                                      ``class_embed``
``hbis.{l}.ln_d.*`` / ``ln_f.*``         (E,)                                        ``layers.{l}.norm_embed/norm_feat``
``hbis.{l}.w_q.weight``                  (E, E)                                      ``layers.{l}.query.weight``
``hbis.{l}.v.weight``                    (E, E, 1, 1)                                ``layers.{l}.value.weight``
``hbis.{l}.mlp_g.{0,2}.*``               Linear 2E->E, E->E                          ``layers.{l}.gate.{0,2}.*``
``hbis.{l}.mlp_c.{0,2}.*``               Linear E->E twice                           ``layers.{l}.candidate.{0,2}.*``
``hbis.{l}.w_gamma.*`` / ``w_beta.*``     Linear E->E                                 ``layers.{l}.film_gamma/beta``
``upsampler.1.*``                        (E/4,) the LayerNorm after PixelShuffle     ``upsampler.norm.*``
``classifier.weight``                    (E/16, E)                                   ``classifier.weight``
``aux_classifier.weight``                (E/16, E)                                   ``aux_classifier.weight``
=======================================  ==========================================  ==========================

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

_HBIS = r"^(?:hbis|hbis_layers|layers|blocks)\.(\d+)"
#: (regex on the authors' key after wrapper stripping, replacement giving our key). First match wins.
AUTHORS_LAYOUT: tuple[tuple[str, str], ...] = (
    (r"^(?:projs|proj|projectors|projections)\.(\d+)\.(weight|bias)$", r"projectors.\1.\2"),
    (r"^(?:fuse|fusion|linear_fuse)\.(?:0\.)?weight$", r"fuse.weight"),
    (r"^(?:ce0|class_embed|class_embedding|class_dict|dictionary)(?:\.weight)?$", r"class_embed"),
    (_HBIS + r"\.(?:ln_d|norm_d)\.(weight|bias)$", r"layers.\1.norm_embed.\2"),
    (_HBIS + r"\.(?:ln_f|norm_f)\.(weight|bias)$", r"layers.\1.norm_feat.\2"),
    (_HBIS + r"\.(?:w_q|q_proj|query)\.weight$", r"layers.\1.query.weight"),
    (_HBIS + r"\.(?:v|v_proj|value)\.weight$", r"layers.\1.value.weight"),
    (_HBIS + r"\.(?:mlp_g|gate)\.([02])\.(weight|bias)$", r"layers.\1.gate.\2.\3"),
    (_HBIS + r"\.(?:mlp_c|cand|candidate)\.([02])\.(weight|bias)$", r"layers.\1.candidate.\2.\3"),
    (_HBIS + r"\.(?:w_gamma|film_gamma|gamma)\.(weight|bias)$", r"layers.\1.film_gamma.\2"),
    (_HBIS + r"\.(?:w_beta|film_beta|beta)\.(weight|bias)$", r"layers.\1.film_beta.\2"),
    (r"^(?:upsampler|upsample|up)\.(?:1|norm)\.(weight|bias)$", r"upsampler.norm.\1"),
    (r"^(?:classifier|cls|seg_classifier)\.weight$", r"classifier.weight"),
    (r"^(?:aux_classifier|aux_cls|aux_head)\.weight$", r"aux_classifier.weight"),
)
_COMPILED = tuple((re.compile(pattern), repl) for pattern, repl in AUTHORS_LAYOUT)
_BACKBONE = re.compile(r"^(?:backbone|encoder)\.(?:features\.)?(.+)$")
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
        extra_renames: Regex -> replacement pairs applied to every key first (``re.sub``), to adapt a real
            checkpoint whose names differ from the assumed layout.

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
        # A torchvision ``features`` Sequential stored on its own has keys "0.0.weight", ...; put the
        # "features." back so the torchvision rules (or the detection of a timm/original layout) apply.
        keys = {k if not k[0].isdigit() else f"features.{k}": v for k, v in backbone.items()}
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

"""Test-time augmentation and the checked predictor: one implementation for the engine and for training.

A mode is a list of views, each a (forward, inverse) pair of exact pixel permutations over the last two axes.
The predictor runs the model on every view of a batch, maps each view's class probabilities back to the
original orientation, and averages them (the mean of softmax outputs, as the segmentation literature does).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

import numpy as np
from numpy.typing import NDArray

from ..backends.contract import InferenceBackend
from ..backends.hbis import HbisBackend
from ..errors import InvalidInputError, ModelLoadError

__all__ = ["TTA_MODES", "Predictor", "TtaMode", "make_predictor", "tta_views"]

TtaMode = Literal["none", "flip", "d4"]
#: ``none``; ``flip``: identity, horizontal and vertical flip (3x); ``d4``: the 8 dihedral views (8x, square tiles).
TTA_MODES: tuple[str, ...] = get_args(TtaMode)

Array = NDArray[np.float32]
Predictor = Callable[[Array], Array]
View = tuple[Callable[[Array], Array], Callable[[Array], Array]]


def _identity(a: Array) -> Array:
    return a


def _flip(axis: int) -> Callable[[Array], Array]:
    def flip(a: Array) -> Array:
        return np.flip(a, axis=axis)

    return flip


def _dihedral(quarter_turns: int, flip: bool) -> View:
    """Rotate by ``quarter_turns`` after an optional horizontal flip, and the exact inverse."""

    def forward(a: Array) -> Array:
        return np.rot90(np.flip(a, axis=-1) if flip else a, quarter_turns, axes=(-2, -1))

    def inverse(a: Array) -> Array:
        turned = np.rot90(a, -quarter_turns, axes=(-2, -1))
        return np.flip(turned, axis=-1) if flip else turned

    return forward, inverse


def tta_views(mode: str) -> list[View]:
    """The (forward, inverse) views of a TTA mode; the identity comes first.

    Raises:
        InvalidInputError: If ``mode`` is not one of :data:`TTA_MODES`.
    """
    if mode == "none":
        return [(_identity, _identity)]
    if mode == "flip":
        return [(_identity, _identity), (_flip(-1), _flip(-1)), (_flip(-2), _flip(-2))]
    if mode == "d4":
        return [_dihedral(k, flip) for k in range(4) for flip in (False, True)]
    raise InvalidInputError(f"Unknown test-time augmentation '{mode}'; choose one of: {', '.join(TTA_MODES)}.")


def make_predictor(
    backend: InferenceBackend, num_classes: int, tta: str = "none", hbis_layer: int | None = None
) -> Predictor:
    """Wrap a backend's ``predict`` with an output-shape check and optional test-time augmentation.

    Args:
        backend: The loaded backend.
        num_classes: K from the model card.
        tta: A name from :data:`TTA_MODES`.
        hbis_layer: Also return this (0-based, already resolved) HBIS layer's heatmaps: the predictor then gives
            (B, 2K, T, T), the K class probabilities followed by the K heatmap channels, so that TTA, blending and
            stitching treat both alike (the backend must honour :class:`~engine.backends.hbis.HbisBackend`).

    The predictor raises :class:`~engine.errors.ModelLoadError` for an output of the wrong shape and for NaN or
    infinite values (naming their share), which would otherwise become nodata or wrong classes without a word.

    Raises:
        InvalidInputError: If ``tta`` is unknown, or ``hbis_layer`` is given for a backend without HBIS heatmaps.
    """
    views = tta_views(tta)
    hbis_backend = backend if isinstance(backend, HbisBackend) else None
    if hbis_layer is not None and hbis_backend is None:
        raise InvalidInputError(f"Backend {backend.name} cannot return HBIS heatmaps; leave HBIS_HEATMAPS empty.")

    def run(batch: Array) -> Array:
        if hbis_layer is None or hbis_backend is None:
            return np.asarray(backend.predict(batch), dtype=np.float32)
        probs, heat = hbis_backend.predict_with_hbis(batch, hbis_layer)
        if np.shape(heat) != np.shape(probs):
            raise ModelLoadError(
                f"The model returned HBIS heatmaps of shape {np.shape(heat)} beside probabilities of shape "
                f"{np.shape(probs)}; they must match. Re-export the model with its heatmaps."
            )
        return np.concatenate([np.asarray(probs, np.float32), np.asarray(heat, np.float32)], axis=1)

    channels = num_classes if hbis_layer is None else 2 * num_classes

    def checked(batch: Array) -> Array:
        probs = run(batch)
        expected = (batch.shape[0], channels, batch.shape[2], batch.shape[3])
        if probs.shape != expected:
            raise ModelLoadError(
                f"The model returned an output of shape {probs.shape} for input {batch.shape}, expected {expected}; "
                "the model card's class list or the model's output size does not match the model. Fix the card."
            )
        finite = np.isfinite(probs)
        if not finite.all():
            share = 1.0 - float(finite.mean())
            raise ModelLoadError(
                f"The model returned NaN or infinite values for {_share(share)} of its outputs on a batch of "
                f"{batch.shape[0]} tile{'s' if batch.shape[0] != 1 else ''}; no class can be taken from them and "
                "nothing was written. The model is broken for this input: check its card's normalisation and value "
                "range, or re-export it (in float32 if it was float16)."
            )
        return probs

    if len(views) == 1:
        return checked

    def averaged(batch: Array) -> Array:
        total = checked(batch)  # the identity view
        for forward, inverse in views[1:]:
            total += inverse(checked(np.ascontiguousarray(forward(batch))))
        total /= np.float32(len(views))
        return total

    return averaged


def _share(share: float) -> str:
    """A share for messages: ``100 %``, ``2.5 %``, ``0.0012 %``."""
    if share >= 0.999995:
        return "100 %"
    return f"{100 * share:.2g} %" if share < 0.01 else f"{100 * share:.1f} %"

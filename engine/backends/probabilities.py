"""Model outputs to class probabilities: a numerically stable softmax, unless the card says the model emits them."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..model_card import ModelCard

__all__ = ["softmax", "to_probabilities"]


def softmax(logits: NDArray[np.floating[Any]], axis: int = 1) -> NDArray[np.float32]:
    """Numerically stable softmax in float32 (the maximum is subtracted before ``exp``)."""
    x = np.asarray(logits, dtype=np.float32)
    shifted = x - x.max(axis=axis, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=axis, keepdims=True)
    result: NDArray[np.float32] = shifted
    return result


def to_probabilities(output: NDArray[np.floating[Any]], card: ModelCard) -> NDArray[np.float32]:
    """Model output -> class probabilities: softmax unless the card says the model outputs probabilities."""
    if card.output_activation == "probabilities":
        return np.asarray(output, dtype=np.float32)
    return softmax(output, axis=1)

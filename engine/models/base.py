"""What every segmentation model in :mod:`engine.models` shares: declared input channels and size divisor.

Size policy (one for all models, chosen so tiles are never silently altered): a model **raises**
:class:`~engine.errors.InvalidInputError` for an input whose height or width is not a multiple of its
``size_divisor_px``. The message names the nearest valid size, so the caller (the tiler, which picks tile sizes from
the model card) can fix the tile size. Padding is the tiler's job, not the model's.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

import torch
from torch import Tensor, nn

from ..errors import InvalidInputError

__all__ = ["SegmentationModel", "nearest_valid_size"]


def strip_wrapper_prefixes(state_dict: Mapping[str, Tensor], prefixes: Iterable[str]) -> dict[str, Tensor]:
    """Drop prefixes that training wrappers add to every key (``module.`` from DDP, ``net.`` from Lightning ...).

    A prefix is removed only when every key carries it, and repeatedly, so nested wrappers unwrap too.
    """
    out = dict(state_dict)
    prefixes = tuple(prefixes)
    changed = True
    while changed:
        changed = False
        for prefix in prefixes:
            if out and all(k.startswith(prefix) for k in out):
                out = {k[len(prefix) :]: v for k, v in out.items()}
                changed = True
    return out


def check_known_options(options: Collection[str], known: Collection[str], model_label: str) -> None:
    """Raise naming the valid options when a builder gets an option its configuration does not have."""
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise InvalidInputError(
            f"Unknown {model_label} option(s) {', '.join(unknown)}; valid options: {', '.join(sorted(known))}."
        )


def nearest_valid_size(size_px: int, divisor_px: int) -> int:
    """The multiple of ``divisor_px`` nearest to ``size_px`` (ties round up), and never below ``divisor_px``."""
    if divisor_px < 1:
        raise ValueError(f"divisor_px must be a positive integer, got {divisor_px}.")
    lower = (size_px // divisor_px) * divisor_px
    upper = lower + divisor_px
    nearest = lower if size_px - lower < upper - size_px else upper
    return max(divisor_px, nearest)


class SegmentationModel(nn.Module):
    """Base class of the segmentation models: input validation against the declared contract.

    Subclasses set ``in_channels`` and ``size_divisor_px`` in ``__init__`` and call :meth:`check_input` first thing
    in ``forward``.

    Attributes:
        in_channels: Number of input bands C the model expects.
        size_divisor_px: Input height and width must be multiples of this.
        encoder_prefixes: Name prefixes (``named_parameters``) of the model's encoder / backbone, so a trainer can
            give it its own learning rate without knowing the architecture; empty when the model has none.
    """

    in_channels: int
    size_divisor_px: int
    encoder_prefixes: tuple[str, ...] = ()

    def is_encoder_parameter(self, name: str) -> bool:
        """Whether the parameter called ``name`` (as in ``named_parameters``) belongs to the encoder."""
        return bool(self.encoder_prefixes) and name.startswith(self.encoder_prefixes)

    def check_input(self, x: Tensor) -> None:
        """Raise :class:`InvalidInputError` if ``x`` is not a (B, in_channels, H, W) batch of valid size.

        Skipped while tracing for ONNX export, where the checks would be frozen into the graph as constants.

        Args:
            x: The model input.

        Raises:
            InvalidInputError: Wrong rank, wrong channel count, or H/W not multiples of ``size_divisor_px``; the
                message names the nearest valid size.
        """
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():  # type: ignore[attr-defined,no-untyped-call]
            return
        if x.ndim != 4:
            raise InvalidInputError(
                f"Model input must be a 4-D (batch, bands, height, width) tensor, got shape {tuple(x.shape)}; "
                "add a batch dimension with x[None]."
            )
        if x.shape[1] != self.in_channels:
            raise InvalidInputError(
                f"Model expects {self.in_channels} input bands but got {x.shape[1]}; "
                f"select {self.in_channels} bands in the model's order."
            )
        height, width = int(x.shape[2]), int(x.shape[3])
        divisor = self.size_divisor_px
        if height % divisor or width % divisor:
            near_h, near_w = nearest_valid_size(height, divisor), nearest_valid_size(width, divisor)
            raise InvalidInputError(
                f"Input size {height}x{width} px (height x width) is not a multiple of {divisor} px, the model's "
                f"size_divisor_px; use the nearest valid size {near_h}x{near_w} px (pad or crop the tile)."
            )

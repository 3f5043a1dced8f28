"""Model registry: plain dicts from names to builders, resolved lazily so importing it costs nothing.

``create_model(name, num_classes=K, **options)`` builds any registered architecture;
``list_models()`` names them. In eval mode every model called on a (B, C, H, W) tensor returns a
:class:`~engine.models.outputs.SegmentationOutput` whose ``logits`` are (B, K, H, W).
"""

from __future__ import annotations

import importlib
from typing import Any

from .outputs import SegmentationOutput

__all__ = ["SegmentationOutput", "create_model", "list_models"]

#: name -> "module:builder" inside engine.models; each builder takes (num_classes, **options) -> nn.Module.
_MODELS: dict[str, str] = {
    "hi_resnet": "hi_resnet:hi_resnet",
    "hi_resnet_small": "hi_resnet:hi_resnet_small",
    "hi_resnet_ca": "hi_resnet:hi_resnet_ca",
    "bicorseg": "bicorseg:bicorseg",
    "bicorseg_small": "bicorseg:bicorseg_small",
    "bicorseg_small_lu": "bicorseg:bicorseg_small_lu",
    "bicorseg_hi_resnet": "bicorseg:bicorseg_hi_resnet",
    "unet": "unet:unet",  # the reference recipe's network (not a paper model), for side-by-side training
}


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`, sorted."""
    return sorted(_MODELS)


def create_model(name: str, num_classes: int, **options: Any) -> Any:
    """Build a registered model with random weights (nothing is ever downloaded).

    Args:
        name: A name from :func:`list_models`.
        num_classes: Number of output classes K.
        **options: Architecture options of that model (see its builder).

    Returns:
        The ``torch.nn.Module``.

    Raises:
        KeyError: If the name is unknown; the message lists the valid names.
    """
    if name not in _MODELS:
        raise KeyError(f"Unknown model '{name}'; choose one of: {', '.join(list_models())}.")
    module_name, builder_name = _MODELS[name].split(":")
    module = importlib.import_module(f"{__name__}.{module_name}")
    return getattr(module, builder_name)(num_classes=num_classes, **options)

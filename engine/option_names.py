"""How each front end spells the options that engine messages point to, so advice names what the user can type.

The engine's messages say how to fix a problem ("use --value-scaling percentile"); on the command line that is a
flag, in QGIS a Processing parameter ("VALUE_SCALING percentile"). A run carries one :class:`OptionNames`
(:attr:`~engine.inference.request.SegmentationRequest.option_names`) and every message formats its advice with it.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CLI_OPTION_NAMES", "PROCESSING_OPTION_NAMES", "OptionNames"]


@dataclass(frozen=True)
class OptionNames:
    """The spelling of the options messages refer to; ``{}`` marks where a value goes.

    Attributes:
        resample_off: Turning resampling to the model's resolution off.
        resample_on: Leaving resampling on (the default).
        tile_size: Setting the tile size to ``{}`` pixels.
        tile_size_default: Taking the tile size from the model.
        value_scaling: Choosing the value scaling ``{}``.
    """

    resample_off: str
    resample_on: str
    tile_size: str
    tile_size_default: str
    value_scaling: str

    def tile(self, size_px: int) -> str:
        """The option that sets the tile size to ``size_px``."""
        return self.tile_size.format(size_px)

    def scaling(self, mode: str) -> str:
        """The option that chooses the value scaling ``mode``."""
        return self.value_scaling.format(mode)


#: ``python -m engine segment`` flags.
CLI_OPTION_NAMES = OptionNames(
    resample_off="--no-resample",
    resample_on="no --no-resample",
    tile_size="--tile-size {}",
    tile_size_default="no --tile-size",
    value_scaling="--value-scaling {}",
)

#: Parameters of the Processing algorithm ``bicorseg:segmentlandcover``.
PROCESSING_OPTION_NAMES = OptionNames(
    resample_off="RESAMPLE false",
    resample_on="RESAMPLE true",
    tile_size="TILE_SIZE {}",
    tile_size_default="TILE_SIZE 0",
    value_scaling="VALUE_SCALING {}",
)

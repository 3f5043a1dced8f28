"""Processing parameters with behaviour QGIS 3.22 does not give: enums that answer to their numbers and strings.

``qgis_process help`` lists every enum's options with numbers ("0: auto, 1: cpu") and says "Number of selected
option, e.g. '1'", but an enum with static strings (whose value, in models and scripts, is the string itself)
refuses ``DEVICE=1``. :class:`StaticStringEnum` accepts both the option number and the string;
:func:`enum_choice` reads either back as the string.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from qgis.core import QgsProcessingAlgorithm, QgsProcessingContext, QgsProcessingParameterEnum

__all__ = ["StaticStringEnum", "enum_choice", "option_index"]


def option_index(value: Any, count: int) -> int | None:
    """The option number ``value`` names (an int or a string of digits in ``0..count-1``), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 <= value < count else None
    if isinstance(value, str) and value.strip().isdigit():
        number = int(value.strip())
        return number if number < count else None
    return None


class StaticStringEnum(QgsProcessingParameterEnum):
    """A single-choice enum with static strings that also accepts its option numbers (``DEVICE=1`` = ``cpu``)."""

    def __init__(
        self, name: str, description: str, options: Sequence[str], default: str, optional: bool = False
    ) -> None:
        super().__init__(
            name, description, options=list(options), defaultValue=default, optional=optional, usesStaticStrings=True
        )

    def checkValueIsAcceptable(self, value: Any, context: QgsProcessingContext | None = None) -> bool:
        """An option number or one of the static strings."""
        if option_index(value, len(self.options())) is not None:
            return True
        return bool(super().checkValueIsAcceptable(value, context))

    def clone(self) -> StaticStringEnum:
        """A copy that keeps accepting numbers (Processing clones definitions, e.g. for batch and model runs)."""
        copy = StaticStringEnum(self.name(), self.description(), self.options(), str(self.defaultValue()))
        copy.setFlags(self.flags())  # optional and advanced travel with the flags
        copy.setHelp(self.help())
        return copy


def enum_choice(
    algorithm: QgsProcessingAlgorithm, parameters: dict[str, Any], name: str, context: QgsProcessingContext
) -> str:
    """The option string of a :class:`StaticStringEnum` parameter, given as a string or an option number."""
    definition = algorithm.parameterDefinition(name)
    options = list(definition.options())
    index = option_index(algorithm.parameterAsString(parameters, name, context), len(options))
    if index is not None:
        return str(options[index])
    return str(algorithm.parameterAsEnumString(parameters, name, context) or definition.defaultValue())

"""The shared tail of the training commands: run the action, print its JSON summary, map errors to exit codes."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Mapping
from typing import Any

from engine.errors import BiCoRSegError, InvalidInputError


def run_json_command(action: Callable[[], Mapping[str, Any]]) -> int:
    """Run a command's action and print its summary as JSON.

    Args:
        action: Does the work and returns a JSON-ready summary.

    Returns:
        The exit code: 0 on success, 2 for bad input (one ``error:`` line naming the fix), 1 for other
        engine errors (e.g. a failed parity check).
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = action()
    except InvalidInputError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    except BiCoRSegError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    return 0

"""Where the embedded default model lives, and resolving the MODEL option to a model file."""

from __future__ import annotations

from pathlib import Path

from .errors import ModelLoadError

#: The embedded default model: ``resources/models/default.onnx`` beside the engine package (in the repository
#: root, or inside ``bicorseg_qgis/`` in the plugin zip, where the engine ships as ``bicorseg_qgis.engine``).
DEFAULT_MODEL_PATH = Path(__file__).resolve().parent.parent / "resources" / "models" / "default.onnx"


def resolve_model_path(model: str | Path | None) -> Path:
    """Turn the MODEL option into an existing model file.

    Args:
        model: A path to a ``.onnx`` model or torch checkpoint; None or ``""`` for the embedded default model.

    Returns:
        The absolute path of the model file.

    Raises:
        ModelLoadError: If the file (or the default model) does not exist; the message says what to do.
    """
    if model is None or not str(model).strip():
        if not DEFAULT_MODEL_PATH.is_file():
            raise ModelLoadError(
                f"The embedded default model is missing ({DEFAULT_MODEL_PATH}); run the set-up (`make demo` builds "
                "and installs it) or choose a model file with MODEL."
            )
        return DEFAULT_MODEL_PATH
    path = Path(str(model).strip()).expanduser()
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise ModelLoadError(
            f"Model file '{path}' {what}; give a .onnx model or a torch checkpoint (.pt), or leave MODEL empty for "
            "the embedded default model."
        )
    return path.resolve()

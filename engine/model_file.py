"""The one owner of a model file: opened once per run, read from disk once, its card parsed once.

A :class:`ModelFile` holds the path, the kind (``"onnx"`` or ``"torch"``), the card and the file's SHA-256, all
taken from a single read of the file's bytes. It lazily builds what the backends need from those same bytes: one
ONNX Runtime inference session (also the metadata reader when the ``onnx`` package is missing, so reading the card
and running the model share one session), or the torch checkpoint dict (one ``torch.load``). Every front end (the
QGIS plugin, the command line, the benchmarks) opens the model with :meth:`ModelFile.open` and passes the object
through, so nothing downstream opens the file again.
"""

from __future__ import annotations

import copy
import hashlib
import io
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from .default_model import resolve_model_path
from .errors import ModelLoadError
from .model_card import CHECKPOINT_SUFFIXES, ModelCard, card_from_checkpoint, card_from_onnx_metadata

__all__ = ["ModelFile", "ModelKind", "model_kind", "read_checkpoint"]

logger = logging.getLogger(__name__)

ModelKind = Literal["onnx", "torch"]


def model_kind(path: Path) -> ModelKind:
    """``"onnx"`` for ``.onnx`` files, ``"torch"`` for checkpoints.

    Raises:
        ModelLoadError: For any other extension (the message lists the accepted ones).
    """
    suffix = Path(path).suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix in CHECKPOINT_SUFFIXES:
        return "torch"
    raise ModelLoadError(
        f"Model file '{Path(path).name}' has an unknown extension '{suffix}'; use .onnx or a torch checkpoint "
        f"({', '.join(CHECKPOINT_SUFFIXES)})."
    )


class ModelFile:
    """A model file opened once: path, kind, card, checksum, and lazily one inference session or checkpoint.

    Attributes:
        path: Absolute path of the file.
        kind: ``"onnx"`` or ``"torch"``.
        card: The model card the file carries (or the one built from Deepness keys).
        sha256: SHA-256 hex digest of the file's bytes.
        input_channels: Static input channel count of an ONNX graph, None where dynamic or for checkpoints.
        input_size_px: Static (height, width) of an ONNX graph's input, None where dynamic or for checkpoints.
    """

    def __init__(
        self,
        path: Path,
        kind: ModelKind,
        payload: bytes,
        card: ModelCard,
        *,
        checkpoint: Mapping[str, Any] | None = None,
        session: Any = None,
        session_key: tuple[Any, ...] | None = None,
        input_channels: int | None = None,
        input_size_px: tuple[int, int] | None = None,
    ) -> None:
        self.path = path
        self.kind: ModelKind = kind
        self.card = card
        self.sha256 = hashlib.sha256(payload).hexdigest()
        self.input_channels = input_channels
        self.input_size_px = input_size_px
        # The bytes stay only until the one inference session exists (it holds its own copy of the graph).
        self._payload: bytes | None = payload if kind == "onnx" and session is None else None
        self._checkpoint = checkpoint
        self._session = session
        self._session_key = session_key

    @classmethod
    def open(cls, model: str | Path | None) -> ModelFile:
        """Open the MODEL option: a ``.onnx`` file, a torch checkpoint, or None / ``""`` for the default model.

        Raises:
            ModelLoadError: If the file is missing, unreadable, or not a model of a known kind.
            ModelCardError: If the model carries no valid card.
        """
        path = resolve_model_path(model)
        kind = model_kind(path)
        try:
            payload = path.read_bytes()
        except OSError as exc:
            raise ModelLoadError(
                f"Cannot read model file '{path}' ({exc.strerror or exc}); check its permissions."
            ) from exc
        if kind == "torch":
            checkpoint = _load_checkpoint_bytes(payload, path)
            return cls(path, kind, payload, card_from_checkpoint(checkpoint, path), checkpoint=checkpoint)
        return _open_onnx(cls, path, payload)

    # --- what the backends build from the file ------------------------------------------------------------

    @property
    def checkpoint(self) -> Mapping[str, Any]:
        """The torch checkpoint dict (loaded once, safely, on :meth:`open`).

        Raises:
            ModelLoadError: If this is not a torch checkpoint.
        """
        if self._checkpoint is None:
            raise ModelLoadError(
                f"'{self.path.name}' is an ONNX model, not a torch checkpoint; use BACKEND onnxruntime."
            )
        return self._checkpoint

    def onnx_session(self, providers: Sequence[Any], num_threads: int) -> Any:
        """The ONNX Runtime session for these providers and threads, built once from the bytes already read.

        Asking again with the same settings returns the same session; other settings build a new one (reading the
        file a second time only if the first session already released the bytes).

        Raises:
            BackendUnavailableError: If onnxruntime is missing (the message says how to install it).
            ModelLoadError: If onnxruntime cannot load the model.
        """
        key = (tuple(repr(p) for p in providers), int(num_threads))
        if self._session is not None and self._session_key == key:
            return self._session
        payload = self._payload if self._payload is not None else self.path.read_bytes()
        self._session = _build_session(payload, self.path, providers, num_threads)
        self._session_key = key
        self._payload = None
        return self._session

    def with_card(self, card: ModelCard) -> ModelFile:
        """The same file (same bytes, checkpoint and session) described by another card.

        For cards edited in memory (a fine-tune's new classes before export, tests of card/model mismatches).
        """
        other = copy.copy(self)
        other.card = card
        return other

    def __repr__(self) -> str:
        return f"ModelFile('{self.path}', kind={self.kind!r}, card={self.card.name!r}, sha256={self.sha256[:12]}...)"


def read_checkpoint(path: Path) -> Mapping[str, Any]:
    """A torch checkpoint dict, loaded safely (``weights_only``), for code that needs the dict and not a model.

    Raises:
        ModelLoadError: If the file is missing, unreadable or not a checkpoint dict.
    """
    try:
        payload = Path(path).read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"Cannot read torch checkpoint '{path}' ({exc.strerror or exc}); check the path.") from exc
    return _load_checkpoint_bytes(payload, Path(path))


def _load_checkpoint_bytes(payload: bytes, path: Path) -> Mapping[str, Any]:
    from .backends.devices import import_backend_library

    torch = import_backend_library("torch")  # a missing torch says what to install
    try:
        checkpoint = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError, KeyError... on bad files
        raise ModelLoadError(
            f"Cannot read torch checkpoint '{path}' ({_checkpoint_failure(exc)}); is it a complete checkpoint saved "
            "by training.checkpoints (a dict with 'state_dict' and 'model_card')?"
        ) from exc
    if not isinstance(checkpoint, Mapping):
        raise ModelLoadError(f"Torch checkpoint '{path}' is not a dict; save {{'state_dict': ..., 'model_card': ...}}.")
    return checkpoint


def _checkpoint_failure(exc: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in a few words.

    torch's own message runs to 700 characters and suggests ``weights_only=False``, which would run whatever code the
    file pickled: never repeat it. Keep only the unpickler's reason, or say what kind of file it is not.
    """
    text = str(exc)
    reason = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\.\s|\.$|$)", text, re.DOTALL)
    if reason is not None:
        detail = " ".join(reason.group(1).split())
        detail = re.sub(
            r"^Unsupported global: GLOBAL (\S+) was not an allowed global by default$", r"it holds a \1", detail
        )
        if detail.startswith("Unsupported operand"):
            return "not a torch checkpoint: its bytes are not a pickle torch can read"
        return f"not a checkpoint of plain tensors and values: {detail[:120]}"
    first = " ".join(text.split("\n", 1)[0].split())
    if isinstance(exc, EOFError) or not first:
        return "the file is empty or cut short" if isinstance(exc, EOFError) else type(exc).__name__
    if isinstance(exc, KeyError) or "weights_only" in first:
        return "not a torch checkpoint"
    return re.sub(r"^\[enforce fail at [^\]]*\]\s*\.?\s*", "", first)[:160]


def _open_onnx(cls: type[ModelFile], path: Path, payload: bytes) -> ModelFile:
    """Read an ONNX file's card with the onnx package, or through the one ORT session when onnx is missing."""
    onnx = _optional_onnx()
    if onnx is not None:
        try:
            proto = onnx.load_model_from_string(payload)
        except Exception as exc:  # protobuf raises a zoo of types on corrupt files
            raise ModelLoadError(f"Cannot read ONNX model '{path}': {exc}. Is the file complete?") from exc
        props = {p.key: p.value for p in proto.metadata_props}
        dims = proto.graph.input[0].type.tensor_type.shape.dim if proto.graph.input else []
        static = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims]
        channels, size = _static_input(static)
        card = card_from_onnx_metadata(props, name=path.stem, num_bands=channels or 3)
        return cls(path, "onnx", payload, card, input_channels=channels, input_size_px=size)
    from .backends.threads import physical_core_count

    providers = ["CPUExecutionProvider"]
    threads = physical_core_count()
    session = _build_session(payload, path, providers, threads)
    shape = session.get_inputs()[0].shape
    channels, size = _static_input([d if isinstance(d, int) and d > 0 else None for d in shape])
    props = dict(session.get_modelmeta().custom_metadata_map)
    card = card_from_onnx_metadata(props, name=path.stem, num_bands=channels or 3)
    key = (tuple(repr(p) for p in providers), threads)
    return cls(path, "onnx", payload, card, session=session, session_key=key, input_channels=channels,
               input_size_px=size)  # fmt: skip


def _optional_onnx() -> Any:
    """The onnx package, or None: the plugin may have only onnxruntime."""
    try:
        import onnx
    except ImportError:
        return None
    return onnx


def _static_input(dims: Sequence[int | None]) -> tuple[int | None, tuple[int, int] | None]:
    """(channels, (height, width)) of a (B, C, H, W) input where static."""
    if len(dims) != 4:
        return None, None
    size = (int(dims[2]), int(dims[3])) if dims[2] is not None and dims[3] is not None else None
    return dims[1], size


def _build_session(payload: bytes, path: Path, providers: Sequence[Any], num_threads: int) -> Any:
    from .backends.devices import import_backend_library

    ort = import_backend_library("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = num_threads
    # Tiles are run one batch at a time; parallelism lives inside each operator.
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # ENABLE_ALL adds layout transforms and conv fusions: ~1.6x faster than BASIC on CPU.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning worker threads would keep burning the cores QGIS's interface needs between runs.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(payload, sess_options=options, providers=list(providers))
    except Exception as exc:  # onnxruntime raises its own untyped errors (Fail, InvalidGraph, ...)
        if "external" not in str(exc).lower():
            raise _session_error(path, exc) from exc
    # Weights in external data files are found relative to the model's path, not from bytes.
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=list(providers))
    except Exception as exc:  # same untyped errors
        raise _session_error(path, exc) from exc


def _session_error(path: Path, exc: BaseException) -> ModelLoadError:
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ModelLoadError(
        f"onnxruntime cannot load '{path}' ({detail}); is the file complete and an ONNX model "
        "(opset <= what this onnxruntime supports)?"
    )

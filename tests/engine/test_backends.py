"""Backends: ONNX Runtime and torch agree, device choice explains itself, errors say what to install or do."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

import engine.default_model
from engine.backends import diagnose, load_backend, resolve_model_path, select_backend_name, softmax
from engine.backends.devices import onnxruntime_cuda_status, torch_cuda_status
from engine.backends.threads import physical_core_count
from engine.errors import BackendUnavailableError, InvalidInputError, ModelLoadError
from engine.model_file import ModelFile
from tests.engine.tiny_assets import TinyModelFiles, make_tiny_card


def reference_probabilities(files: TinyModelFiles, batch: np.ndarray) -> np.ndarray:
    """Softmax of the torch module's logits, computed here in float64."""
    import torch

    with torch.no_grad():
        logits = files.module(torch.from_numpy(batch)).logits.double().numpy()
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def random_batch(batch: int = 2, height: int = 20, width: int = 24, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(batch, 3, height, width)).astype(np.float32)


def cpu_only_onnxruntime(monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])


# --- agreement --------------------------------------------------------------------------------------------


def test_onnxruntime_and_torch_agree_on_the_tiny_model(
    tiny_model_files: TinyModelFiles, tiny_conv_registered: None
) -> None:
    batch = random_batch()
    onnx_backend = load_backend(_model(tiny_model_files.onnx_path, tiny_model_files.card), device="cpu")
    torch_backend = load_backend(_model(tiny_model_files.checkpoint_path, tiny_model_files.card), device="cpu")
    assert (onnx_backend.name, torch_backend.name) == ("onnxruntime", "torch")
    from_onnx = onnx_backend.predict(batch)
    from_torch = torch_backend.predict(batch)
    expected = reference_probabilities(tiny_model_files, batch)
    assert from_onnx.shape == from_torch.shape == (2, 3, 20, 24)
    assert from_onnx.dtype == from_torch.dtype == np.float32
    np.testing.assert_allclose(from_onnx, expected, atol=1e-5)
    np.testing.assert_allclose(from_torch, expected, atol=1e-5)
    np.testing.assert_allclose(from_onnx.sum(axis=1), 1.0, atol=1e-5)


def test_probabilities_models_are_not_softmaxed_again(tiny_model_files: TinyModelFiles) -> None:
    card = tiny_model_files.card.replace(output_activation="probabilities")
    backend = load_backend(_model(tiny_model_files.onnx_path, card), device="cpu")
    batch = random_batch(batch=1)
    import torch

    with torch.no_grad():
        logits = tiny_model_files.module(torch.from_numpy(batch)).logits.numpy()
    np.testing.assert_allclose(backend.predict(batch), logits, atol=1e-5)


def test_softmax_is_stable_for_huge_logits() -> None:
    logits = np.array([[[[1000.0]], [[1001.0]], [[-1000.0]]]], dtype=np.float32)
    probs = softmax(logits)
    e = np.exp(-1.0)
    np.testing.assert_allclose(probs[0, :, 0, 0], [e / (1 + e), 1 / (1 + e), 0.0], atol=1e-7)
    assert probs.dtype == np.float32


# --- devices ----------------------------------------------------------------------------------------------


def test_auto_device_without_cuda_says_why_for_onnxruntime(
    tiny_model_files: TinyModelFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    cpu_only_onnxruntime(monkeypatch)
    backend = load_backend(_model(tiny_model_files.onnx_path, tiny_model_files.card))
    assert backend.device == "cpu"
    assert "CUDA not available" in backend.device_reason
    assert "no CUDAExecutionProvider" in backend.device_reason and "onnxruntime-gpu" in backend.device_reason


def test_auto_device_on_this_machine_matches_torch_cuda_and_says_why(
    tiny_model_files: TinyModelFiles, tiny_conv_registered: None
) -> None:
    import torch

    backend = load_backend(_model(tiny_model_files.checkpoint_path, tiny_model_files.card))
    if torch.cuda.is_available():
        assert backend.device == "cuda"
    else:
        assert backend.device == "cpu"
        assert backend.device_reason.startswith("CUDA not available: torch")
        assert ("built without CUDA" in backend.device_reason) == (torch.version.cuda is None)


def test_cuda_request_without_cuda_raises_with_reason_and_fix(
    tiny_model_files: TinyModelFiles, tiny_conv_registered: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    cpu_only_onnxruntime(monkeypatch)
    with pytest.raises(BackendUnavailableError, match=r"DEVICE cuda .*onnxruntime.*DEVICE auto or cpu"):
        load_backend(_model(tiny_model_files.onnx_path, tiny_model_files.card), device="cuda")
    from engine.backends import torch_backend

    monkeypatch.setattr(torch_backend, "torch_cuda_status", lambda torch: (False, "no NVIDIA driver"))
    with pytest.raises(BackendUnavailableError, match=r"not usable with torch: no NVIDIA driver.*DEVICE auto or cpu"):
        load_backend(_model(tiny_model_files.checkpoint_path, tiny_model_files.card), device="cuda")


def test_cuda_status_functions_agree_with_the_libraries() -> None:
    import onnxruntime
    import torch

    ort_usable, ort_reason = onnxruntime_cuda_status(onnxruntime)
    assert ort_usable == ("CUDAExecutionProvider" in onnxruntime.get_available_providers())
    torch_usable, torch_reason = torch_cuda_status(torch)
    assert torch_usable == torch.cuda.is_available()
    assert ort_reason and torch_reason


def test_onnxruntime_threads_default_to_physical_cores(tiny_model_files: TinyModelFiles) -> None:
    default = load_backend(_model(tiny_model_files.onnx_path, tiny_model_files.card), device="cpu")
    one = load_backend(_model(tiny_model_files.onnx_path, tiny_model_files.card), device="cpu", num_threads=1)
    assert default.num_threads == physical_core_count() >= 1  # type: ignore[attr-defined]
    options = one._session.get_session_options()  # type: ignore[attr-defined]
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (1, 1)


# --- choosing and loading ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "backend", "expected"),
    [("m.onnx", "auto", "onnxruntime"), ("m.pt", "auto", "torch"), ("m.PTH", "AUTO", "torch"),
     ("m.onnx", "onnxruntime", "onnxruntime"), ("m.ckpt", "torch", "torch")],
)  # fmt: skip
def test_backend_follows_the_file_type(filename: str, backend: str, expected: str) -> None:
    assert select_backend_name(_named(filename), backend) == expected


def test_onnxruntime_for_a_checkpoint_says_to_export_it() -> None:
    with pytest.raises(InvalidInputError, match=r"cannot run the torch checkpoint.*export it to ONNX"):
        select_backend_name(_named("model.pt"), "onnxruntime")
    with pytest.raises(InvalidInputError, match="BACKEND torch cannot run the ONNX model"):
        select_backend_name(_named("model.onnx"), "torch")
    with pytest.raises(ModelLoadError, match=r"unknown extension '\.h5'"):
        select_backend_name(_named("model.h5"))
    with pytest.raises(InvalidInputError, match="Unknown backend 'tensorrt'"):
        select_backend_name(_named("model.onnx"), "tensorrt")


def test_unknown_device_is_rejected(tiny_model_files: TinyModelFiles) -> None:
    with pytest.raises(InvalidInputError, match="Unknown device 'gpu'; choose auto, cpu, cuda"):
        load_backend(_model(tiny_model_files.onnx_path, tiny_model_files.card), device="gpu")


@pytest.mark.parametrize(("library", "hint"), [("onnxruntime", "pip install onnxruntime"),
                                               ("torch", "pip install torch==2.13.0")])  # fmt: skip
def test_missing_library_says_what_to_install(
    tiny_model_files: TinyModelFiles, monkeypatch: pytest.MonkeyPatch, library: str, hint: str
) -> None:
    monkeypatch.setitem(sys.modules, library, None)  # makes `import library` fail as if not installed
    path = tiny_model_files.onnx_path if library == "onnxruntime" else tiny_model_files.checkpoint_path
    with pytest.raises(BackendUnavailableError, match=hint.replace(".", r"\.")):
        load_backend(_model(path, tiny_model_files.card), device="cpu")


def test_onnx_input_channels_must_match_the_card(tiny_model_files: TinyModelFiles) -> None:
    card = make_tiny_card(input_bands=("red", "green", "blue", "nir"), norm_mean=(0.5,) * 4, norm_std=(0.2,) * 4)
    with pytest.raises(ModelLoadError, match=r"takes 3 input channels but its card lists 4 input bands"):
        load_backend(_model(tiny_model_files.onnx_path, card), device="cpu")


def test_class_count_mismatch_is_reported(tiny_model_files: TinyModelFiles) -> None:
    card = make_tiny_card(class_names=("a", "b"), class_colors=("#000000", "#ffffff"))
    backend = load_backend(_model(tiny_model_files.onnx_path, card), device="cpu")
    with pytest.raises(ModelLoadError, match=r"expected \(1, 2, 8, 8\) for the card's 2 classes"):
        backend.predict(random_batch(batch=1, height=8, width=8))


def test_batch_with_wrong_band_count_is_rejected(tiny_model_files: TinyModelFiles) -> None:
    backend = load_backend(_model(tiny_model_files.onnx_path, tiny_model_files.card), device="cpu")
    with pytest.raises(InvalidInputError, match=r"expected \(B, 3, H, W\)"):
        backend.predict(np.zeros((1, 4, 8, 8), dtype=np.float32))


def test_corrupt_onnx_file_is_a_model_load_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"not a protobuf")
    with pytest.raises(ModelLoadError, match=r"broken\.onnx"):
        load_backend(_model(path, make_tiny_card()), device="cpu")


def test_checkpoint_problems_are_model_load_errors(
    tmp_path: Path, tiny_model_files: TinyModelFiles, tiny_conv_registered: None
) -> None:
    import torch

    card = tiny_model_files.card
    no_weights = tmp_path / "no_weights.pt"
    torch.save({"model_card": card.to_json()}, no_weights)
    with pytest.raises(ModelLoadError, match="has no 'state_dict'"):
        load_backend(_model(no_weights, card), device="cpu")
    with pytest.raises(ModelLoadError, match=r"Cannot build architecture 'nonexistent'.*list_models"):
        load_backend(_model(tiny_model_files.checkpoint_path, card.replace(architecture="nonexistent")), device="cpu")
    wide = card.replace(architecture_args={"in_channels": 3, "hidden": 16})
    with pytest.raises(ModelLoadError, match="do not fit architecture 'tiny_conv'"):
        load_backend(_model(tiny_model_files.checkpoint_path, wide), device="cpu")


def test_data_parallel_prefixes_are_stripped(
    tmp_path: Path, tiny_model_files: TinyModelFiles, tiny_conv_registered: None
) -> None:
    import torch

    state = {f"module.{k}": v for k, v in tiny_model_files.module.state_dict().items()}
    path = tmp_path / "ddp.pt"
    torch.save({"state_dict": state, "model_card": tiny_model_files.card.to_json()}, path)
    batch = random_batch(batch=1)
    probs = load_backend(_model(path, tiny_model_files.card), device="cpu").predict(batch)
    np.testing.assert_allclose(probs, reference_probabilities(tiny_model_files, batch), atol=1e-5)


def test_torch_backend_runs_a_registered_architecture(tmp_path: Path) -> None:
    import torch

    from engine.models import create_model

    card = make_tiny_card(architecture="hi_resnet_small", architecture_args={}, size_divisor_px=16)
    torch.manual_seed(1)
    model = create_model("hi_resnet_small", num_classes=card.num_classes).eval()
    path = tmp_path / "hi_resnet_small.pt"
    torch.save({"state_dict": model.state_dict(), "model_card": card.to_json()}, path)
    batch = random_batch(batch=1, height=32, width=32)
    with torch.no_grad():
        expected = torch.softmax(model(torch.from_numpy(batch)).logits, dim=1).numpy()
    backend = load_backend(_model(path, card), device="cpu")
    np.testing.assert_allclose(backend.predict(batch), expected, atol=1e-5)


# --- diagnostics and the default model --------------------------------------------------------------------


def test_diagnose_reports_versions_devices_and_why_not_cuda() -> None:
    import numpy
    import onnxruntime
    import rasterio
    import torch

    info = diagnose()
    json.dumps(info)  # the CLI prints it as JSON
    assert info["numpy"] == numpy.__version__ and info["rasterio"] == rasterio.__version__
    assert info["gdal"] == rasterio.__gdal_version__
    assert info["onnxruntime"]["version"] == onnxruntime.__version__
    assert info["onnxruntime"]["providers"] == onnxruntime.get_available_providers()
    assert info["torch"]["version"] == torch.__version__ and info["torch"]["import_error"] is None
    assert info["devices"]["cpu"]["usable"] is True
    cuda = info["devices"]["cuda"]
    assert cuda["usable"] == (
        torch.cuda.is_available() or "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    )
    assert "onnxruntime:" in cuda["reason"] and "torch:" in cuda["reason"]


def test_diagnose_reports_a_missing_library_with_its_import_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    info = diagnose()
    assert info["onnxruntime"]["version"] is None
    assert (
        "ModuleNotFoundError" in info["onnxruntime"]["import_error"]
        or "ImportError" in info["onnxruntime"]["import_error"]
    )
    assert "pip install onnxruntime" in info["onnxruntime"]["cuda_reason"]


def test_default_model_resolves_or_says_to_run_the_setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    present = tmp_path / "default.onnx"
    present.write_bytes(b"x")
    monkeypatch.setattr(engine.default_model, "DEFAULT_MODEL_PATH", present)
    assert resolve_model_path(None) == present
    assert resolve_model_path("  ") == present
    monkeypatch.setattr(engine.default_model, "DEFAULT_MODEL_PATH", tmp_path / "gone.onnx")
    with pytest.raises(ModelLoadError, match=r"default model is missing.*make demo"):
        resolve_model_path("")


def test_default_model_path_is_beside_the_engine_package() -> None:
    root = Path(engine.default_model.__file__).resolve().parent.parent
    assert root / "resources" / "models" / "default.onnx" == engine.default_model.DEFAULT_MODEL_PATH


def test_model_paths_resolve_or_name_the_missing_file(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    assert resolve_model_path(str(model)) == model.resolve()
    with pytest.raises(ModelLoadError, match=r"nope\.onnx' does not exist.*leave MODEL empty"):
        resolve_model_path(tmp_path / "nope.onnx")


# --- GPU (skipped without CUDA) ---------------------------------------------------------------------------


@pytest.mark.gpu
def test_torch_on_cuda_agrees_with_cpu(tiny_model_files: TinyModelFiles, tiny_conv_registered: None) -> None:
    batch = random_batch(batch=4, height=64, width=64)
    gpu = load_backend(_model(tiny_model_files.checkpoint_path, tiny_model_files.card), device="cuda")
    assert gpu.device == "cuda"
    np.testing.assert_allclose(gpu.predict(batch), reference_probabilities(tiny_model_files, batch), atol=2e-2)


@pytest.mark.gpu
def test_onnxruntime_on_cuda_agrees_with_cpu(tiny_model_files: TinyModelFiles) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():  # CPU build beside a GPU
        with pytest.raises(BackendUnavailableError, match="onnxruntime-gpu"):
            load_backend(_model(tiny_model_files.onnx_path, tiny_model_files.card), device="cuda")
        return
    batch = random_batch(batch=4, height=64, width=64)
    gpu = load_backend(_model(tiny_model_files.onnx_path, tiny_model_files.card), device="cuda")
    np.testing.assert_allclose(gpu.predict(batch), reference_probabilities(tiny_model_files, batch), atol=1e-4)


def _model(path: Path, card: object) -> ModelFile:
    """The model file at ``path`` described by ``card`` (which may deliberately disagree with the file)."""
    return ModelFile.open(path).with_card(card)  # type: ignore[arg-type]


def _named(file_name: str) -> object:
    """What select_backend_name reads of a model file (its kind and name), for file types without a real file."""
    from types import SimpleNamespace

    from engine.model_file import model_kind

    return SimpleNamespace(kind=model_kind(Path(file_name)), path=Path(file_name))

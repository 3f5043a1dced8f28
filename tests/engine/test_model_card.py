"""Model card: validation, JSON round trip, ONNX/checkpoint carriage and Deepness interoperability."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.errors import ModelCardError, ModelLoadError
from engine.model_card import (
    CHECKPOINT_KEY,
    ONNX_METADATA_KEY,
    ModelCard,
    card_from_deepness_metadata,
    card_from_onnx_metadata,
    onnx_metadata_props,
    read_card,
)


def make_card(**changes: object) -> ModelCard:
    base = ModelCard(
        name="test model",
        architecture="hi_resnet_small",
        class_names=("building", "land", "road"),
        class_colors=("#3C1098", "#8429F6", "#6EC1E4"),
        tile_size_px=256,
        overlap_px=32,
        gsd_m=0.5,
        metrics={"val_miou": 0.7},
    )
    return base.replace(**changes) if changes else base


def test_card_round_trips_through_json() -> None:
    card = make_card()
    again = ModelCard.from_json(card.to_json())
    assert again == card
    assert again.num_classes == 3
    assert again.class_names == ("building", "land", "road")


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"class_colors": ("#000000",)}, "class_colors"),
        ({"class_colors": ("#000000", "#111111", "red")}, "class_colors"),
        ({"norm_mean": (0.5, 0.5)}, "norm_mean"),
        ({"norm_std": (0.5, 0.0, 0.5)}, "norm_std"),
        ({"tile_size_px": 250}, "tile_size_px"),
        ({"overlap_px": 256}, "overlap_px"),
        ({"input_value_range": (255.0, 0.0)}, "input_value_range"),
        ({"gsd_m": -1.0}, "gsd_m"),
        ({"input_dtype": "complex64"}, "input_dtype"),
        ({"schema_version": 99}, "schema_version"),
    ],
)
def test_invalid_field_is_named_in_the_error(changes: dict[str, object], field: str) -> None:
    with pytest.raises(ModelCardError, match=f"'{field}'"):
        make_card(**changes)


def test_missing_required_field_is_named() -> None:
    data = make_card().to_dict()
    del data["class_names"]
    with pytest.raises(ModelCardError, match="'class_names' is missing"):
        ModelCard.from_dict(data)


def test_wrongly_typed_field_is_named() -> None:
    data = make_card().to_dict()
    data["tile_size_px"] = 12.5
    with pytest.raises(ModelCardError, match="'tile_size_px'"):
        ModelCard.from_dict(data)


def test_invalid_json_is_a_card_error() -> None:
    with pytest.raises(ModelCardError, match="not valid JSON"):
        ModelCard.from_json("{not json")


def test_onnx_props_carry_card_and_deepness_keys() -> None:
    card = make_card()
    props = onnx_metadata_props(card)
    assert json.loads(props[ONNX_METADATA_KEY])["name"] == "test model"
    assert json.loads(props["model_type"]) == "Segmentor"
    assert json.loads(props["class_names"]) == {"0": "building", "1": "land", "2": "road"}
    assert json.loads(props["tile_size"]) == 256
    assert json.loads(props["tiles_overlap"]) == 12  # 32 / 256 = 12.5 % -> 12
    assert json.loads(props["resolution"]) == pytest.approx(50.0)  # centimetres per pixel
    assert card_from_onnx_metadata(props, name="x") == card


def test_deepness_metadata_is_read_without_our_card() -> None:
    props = {
        "model_type": json.dumps("Segmentor"),
        "class_names": json.dumps({"0": "background", "1": "field", "2": "road"}),
        "resolution": json.dumps(20),
        "tile_size": json.dumps(512),
        "tiles_overlap": json.dumps(10),
        "standardization_mean": json.dumps([0.1, 0.2, 0.3]),
        "standardization_std": json.dumps([0.5, 0.5, 0.5]),
    }
    card = card_from_deepness_metadata(props, name="corn", num_bands=3)
    assert card.class_names == ("background", "field", "road")
    assert card.gsd_m == pytest.approx(0.2)
    assert card.tile_size_px == 512
    assert card.overlap_px == 51  # 10 % of 512, rounded
    assert card.norm_mean == (0.1, 0.2, 0.3)
    assert card.output_activation == "probabilities"


def test_deepness_detector_is_refused() -> None:
    props = {"model_type": json.dumps("Detector"), "class_names": json.dumps(["car"])}
    with pytest.raises(ModelCardError, match="only segmentation"):
        card_from_deepness_metadata(props, name="det")


def test_metadata_without_any_card_explains_the_fix() -> None:
    with pytest.raises(ModelCardError, match=r"training\.export"):
        card_from_onnx_metadata({}, name="bare")


def test_card_is_read_from_an_onnx_file(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("Identity", ["x"], ["logits"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 3, "h", "w"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", 3, "h", "w"])],
    )
    model = helper.make_model(graph)
    for key, value in onnx_metadata_props(make_card()).items():
        model.metadata_props.add(key=key, value=value)
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    assert read_card(path) == make_card()


def test_card_is_read_from_a_torch_checkpoint(tmp_path: Path) -> None:
    import torch

    path = tmp_path / "m.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, CHECKPOINT_KEY: make_card().to_json()}, path)
    assert read_card(path) == make_card()


def test_checkpoint_without_card_explains_the_fix(tmp_path: Path) -> None:
    import torch

    path = tmp_path / "bare.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(ModelCardError, match="carries no 'model_card'"):
        read_card(path)


def test_missing_and_corrupt_model_files_are_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        read_card(tmp_path / "nope.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises((ModelLoadError, ModelCardError)):
        read_card(corrupt)
    with pytest.raises(ModelLoadError, match="unknown extension"):
        read_card(_touch(tmp_path / "model.h5"))


def _touch(path: Path) -> Path:
    path.write_bytes(b"")
    return path

"""Config loading: YAML + type-checked ``--set`` overrides, clear errors, every shipped config valid."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from training.config import (
    ConfigError,
    TrainConfig,
    config_to_dict,
    load_config,
    parse_override,
    resolve_config,
    save_config,
)

CONFIG_DIR = Path(__file__).resolve().parents[2] / "training" / "configs"


def test_defaults_load_without_a_file() -> None:
    config = load_config(None)
    assert isinstance(config, TrainConfig)
    assert config.data.val_split != config.data.test_split


def test_overrides_are_parsed_as_yaml_and_converted_to_the_field_type(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 1.0e-4\nmodel:\n  name: bicorseg\n", encoding="utf-8")
    config = load_config(path, ["optim.lr=3e-4", "optim.betas=[0.8, 0.99]", "data.batch_size=4",
                                "model.options.num_layers=3", "run.amp=false", "loss.aux_weight=0.2"])  # fmt: skip
    assert config.optim.lr == pytest.approx(3e-4)
    assert config.optim.betas == (0.8, 0.99)
    assert config.data.batch_size == 4
    assert config.model.options == {"num_layers": 3}
    assert config.model.name == "bicorseg"
    assert config.run.amp is False
    assert config.loss == {"aux_weight": 0.2}


def test_yaml_1_1_exponent_strings_are_accepted_as_numbers(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 6e-5\n", encoding="utf-8")  # PyYAML reads "6e-5" as a string
    assert load_config(path).optim.lr == pytest.approx(6e-5)


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("optim.lrr=1", "valid keys in optim: lr, weight_decay"),
        ("nosuch.key=1", "valid keys in the top level: data, model, loss, optim, schedule, run"),
        ("optim.lr=fast", "'optim.lr' must be a number"),
        ("data.batch_size=2.5", "'data.batch_size' must be an integer"),
        ("run.amp=1", "'run.amp' must be true or false"),
        ("run.device=gpu", "choose one of 'auto', 'cpu', 'cuda'"),
        ("optim.betas=[0.9]", "'optim.betas' must be a list of 2 values"),
        ("loss.no_such_weight=1", "valid keys in loss:"),
        ("loss.num_classes=3", "is set from the dataset"),
        ("optim.lr.x=1", "is a value, not a section"),
        ("data.val_split=test", "equals the test split"),
        ("optim.lookahead_alpha=2", "optim.lookahead_alpha"),
        ("data.colour_jitter=1.5", "'data.colour_jitter' must be in [0, 1)"),
        ("novalue", "must look like section.key=value"),
    ],
)
def test_invalid_overrides_name_the_key_and_the_fix(override: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert fragment in str(info.value)


def test_unknown_key_in_a_file_lists_the_valid_keys(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("schedule:\n  epoch: 3\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"'epoch'.*valid keys: epochs, warmup_epochs"):
        load_config(path)


def test_missing_file_and_non_mapping_file_are_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(bad)


def test_saved_config_round_trips_to_an_equal_config(tmp_path: Path) -> None:
    original = load_config(None, ["optim.betas=[0.8, 0.99]", "data.options.val_tiles=[3]", "loss.heatmap_betas=[1, 2]"])
    save_config(original, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == original
    assert resolve_config(config_to_dict(original)) == original


def test_parse_override_splits_the_dotted_key() -> None:
    assert parse_override("a.b.c=[1, 2]") == (["a", "b", "c"], [1, 2])
    assert parse_override("run.name=") == (["run", "name"], "")


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_is_valid(path: Path) -> None:
    config = load_config(path)
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert config.model.name == raw["model"]["name"]
    assert config.data.val_split != config.data.test_split


def _architecture_fields(model_name: str) -> set[str]:
    import dataclasses

    from engine.models.bicorseg import BiCoRSegConfig
    from engine.models.hi_resnet import HiResNetConfig

    config_class = BiCoRSegConfig if model_name.startswith("bicorseg") else HiResNetConfig
    return {f.name for f in dataclasses.fields(config_class)}


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_names_real_architecture_options(path: Path) -> None:
    config = load_config(path)
    assert set(config.model.options) <= _architecture_fields(config.model.name)
    assert config.model.tile_size_px % 32 == 0  # valid for both families (divisors 16 and 32)

"""Datasets: canonical layout reader, registry, class lists, and the colour-mask (Dubai) dataset."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.errors import InvalidInputError
from training.datasets import DATASET_INFOS, DATASETS, DatasetNotFoundError, build_dataset, list_datasets
from training.datasets.base import colours_to_indices
from training.datasets.colour_masks import ColourMaskDataset, DubaiAerial
from training.prepare import PatchRecipe, prepare
from training.transforms import Normalization, SmartCrop

DATA = Path(__file__).resolve().parents[1] / "data"
DUBAI = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "dubai-aerial"
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])


@pytest.fixture(scope="module")
def loveda_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("loveda")
    prepare("loveda", DATA / "loveda" / "raw", root)
    return root


@pytest.fixture(scope="module")
def vaihingen_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("vaihingen")
    prepare("vaihingen", DATA / "vaihingen" / "raw", root, PatchRecipe(32, 32, 32))
    return root


def test_registry_lists_every_dataset():
    assert list_datasets() == sorted(DATASETS)
    assert {"loveda", "potsdam", "vaihingen", "uavid", "colour_masks", "dubai_aerial"} <= set(DATASETS)


def test_unknown_dataset_names_the_choices():
    with pytest.raises(InvalidInputError, match="loveda"):
        build_dataset("isaid", "/tmp", "train")


def test_bad_option_is_reported(loveda_root):
    with pytest.raises(InvalidInputError, match="Bad options"):
        build_dataset("loveda", loveda_root, "train", crop=3)


def test_class_lists_and_protocols():
    assert DATASET_INFOS["loveda"].class_names[0] == "background" and DATASET_INFOS["loveda"].num_classes == 7
    assert DATASET_INFOS["loveda"].eval_classes == tuple(range(7))
    for name in ("potsdam", "vaihingen"):
        info = DATASET_INFOS[name]
        assert info.class_names[5] == "clutter" and info.eval_classes == (0, 1, 2, 3, 4)
        assert info.hex_colors == ("#ffffff", "#0000ff", "#00ffff", "#00ff00", "#ffff00", "#ff0000")
    assert DATASET_INFOS["vaihingen"].band_names == ("nir", "red", "green")
    assert DATASET_INFOS["uavid"].num_classes == 8 and DATASET_INFOS["uavid"].palette[7] == (0, 0, 0)
    assert all(info.ignore_index == 255 for info in DATASET_INFOS.values())


def test_loveda_sample_is_normalised_tensors(loveda_root):
    dataset = build_dataset("loveda", loveda_root, "train")
    assert len(dataset) == 3
    sample = dataset[0]
    assert sample["image"].dtype == torch.float32 and sample["image"].shape == (3, 32, 32)
    assert sample["mask"].dtype == torch.int64 and sample["mask"].shape == (32, 32)
    raw = np.asarray(Image.open(dataset.items[0][0]), dtype=np.float64)  # (H, W, 3)
    expected = (raw / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    np.testing.assert_allclose(sample["image"].numpy().transpose(1, 2, 0), expected, atol=1e-5)
    assert set(sample["mask"].unique().tolist()) <= {*range(7), 255}


def test_loveda_train_val_joins_both_splits_and_test_has_ignore_masks(loveda_root):
    assert len(build_dataset("loveda", loveda_root, "train_val")) == 5
    test = build_dataset("loveda", loveda_root, "test")
    assert (test[0]["mask"] == 255).all()


def test_unknown_split_and_missing_root(loveda_root, tmp_path):
    with pytest.raises(InvalidInputError, match="train_val"):
        build_dataset("loveda", loveda_root, "trainval")
    with pytest.raises(DatasetNotFoundError, match=r"training\.prepare"):
        build_dataset("potsdam", tmp_path, "train")


def test_missing_mask_is_reported(loveda_root, tmp_path):
    (tmp_path / "val" / "images").mkdir(parents=True)
    (tmp_path / "val" / "masks").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "val" / "images" / "9.png")
    with pytest.raises(DatasetNotFoundError, match=r"9\.png"):
        build_dataset("loveda", tmp_path, "val")


def test_vaihingen_patches_with_transforms_and_mosaic(vaihingen_root):
    dataset = build_dataset(
        "vaihingen", vaihingen_root, "train", transforms=SmartCrop(16), mosaic_p=1.0, normalization=Normalization()
    )
    torch.manual_seed(0)
    sample = dataset[1]
    assert sample["image"].shape == (3, 16, 16) and sample["mask"].shape == (16, 16)
    assert set(sample["mask"].unique().tolist()) <= {*range(6), 255}
    with pytest.raises(IndexError):
        dataset[len(dataset)]


def test_samples_batch_in_a_dataloader(vaihingen_root):
    dataset = build_dataset("vaihingen", vaihingen_root, "val")
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=2)))
    assert batch["image"].shape == (2, 3, 32, 32) and batch["mask"].shape == (2, 32, 32)


def test_colours_to_indices_counts_unknown_colours():
    rgb = np.array([[[1, 9, 0]], [[2, 9, 0]], [[3, 9, 0]]], np.uint8)  # (3, 1, 3): colours (1,2,3) (9,9,9) (0,0,0)
    mask, unknown = colours_to_indices(rgb, [(1, 2, 3)], ignore_colours=[(0, 0, 0)])
    np.testing.assert_array_equal(mask, [[0, 255, 255]])
    assert unknown == 1


# --- colour masks -------------------------------------------------------------------------------------------

CLASSES = [{"name": "building", "color": "#3c1098"}, {"name": "water", "color": [226, 169, 41]}]


def make_tiles(root: Path, sizes=((20, 24), (16, 16), (12, 18))) -> None:
    """Tiles tile1..3, two parts each: left half building, right half water, grey/black/unknown corners."""
    for t, (height, width) in enumerate(sizes, start=1):
        for part in (1, 2):
            (root / f"tile{t}" / "images").mkdir(parents=True, exist_ok=True)
            (root / f"tile{t}" / "masks").mkdir(parents=True, exist_ok=True)
            image = np.full((height, width, 3), 10 * t + part, np.uint8)
            Image.fromarray(image).save(root / f"tile{t}" / "images" / f"image_part_00{part}.jpg")
            mask = np.zeros((height, width, 3), np.uint8)
            mask[:, : width // 2] = (60, 16, 152)
            mask[:, width // 2 :] = (226, 169, 41)
            mask[0, 0] = (155, 155, 155)
            mask[0, 1] = (0, 0, 0)
            mask[0, 2] = (1, 2, 3)
            Image.fromarray(mask).save(root / f"tile{t}" / "masks" / f"image_part_00{part}.png")


@pytest.fixture
def tiles(tmp_path):
    make_tiles(tmp_path)
    return tmp_path


def colour_dataset(root, split, **options):
    return build_dataset("colour_masks", root, split, classes=CLASSES, val_tiles=[2], **options)


def test_colour_masks_split_by_whole_tiles(tiles):
    train = colour_dataset(tiles, "train")
    val = colour_dataset(tiles, "val")
    assert [t.name for t in train.tiles] == ["tile1", "tile3"]
    assert [t.name for t in val.tiles] == ["tile2"]
    assert len(train) == 4 and len(val) == 2
    assert train.info.class_names == ("building", "water")


def test_colour_masks_map_colours_and_ignore_others(tiles, caplog):
    with caplog.at_level(logging.WARNING):
        val = colour_dataset(tiles, "val")
    mask = val[0]["mask"].numpy()
    expected = np.zeros((16, 16), np.int64)
    expected[:, 8:] = 1
    expected[0, :3] = 255  # unlabeled grey, black, unknown colour
    np.testing.assert_array_equal(mask, expected)
    assert "2 mask pixels had colours of no class" in caplog.text  # one unknown pixel per image


def test_colour_masks_downscale_in_memory(tiles):
    val = colour_dataset(tiles, "val", downscale=0.5)
    assert val[0]["image"].shape == (3, 8, 8)
    assert set(val[0]["mask"].unique().tolist()) <= {0, 1, 255}


def test_colour_masks_random_samples_per_epoch(tiles):
    train = colour_dataset(tiles, "train", samples_per_epoch=7, window_px=10, transforms=SmartCrop(8))
    assert len(train) == 7
    sample = train[6]
    assert sample["image"].shape == (3, 8, 8)
    # only tiles 1 and 3 are drawn: their image values are 11, 12, 31, 32 (JPEG may shift them by a little)
    raw = sample["image"][0] * 0.229 + 0.485
    assert min(abs(raw.mean().item() * 255 - v) for v in (11, 12, 31, 32)) < 3


def test_colour_masks_eval_grid_pads_with_ignore(tiles):
    val = colour_dataset(tiles, "val", eval_patch_px=12)
    assert len(val) == 2 * 4  # 16 x 16 images in 12 px windows: 2 x 2 each
    last = val[3]["mask"].numpy()
    assert last.shape == (12, 12)
    assert (last[4:, :] == 255).all() and (last[:, 4:] == 255).all()


def test_colour_masks_reject_unknown_val_tile_and_empty_split(tiles):
    with pytest.raises(InvalidInputError, match="tile1, tile2, tile3"):
        build_dataset("colour_masks", tiles, "train", classes=CLASSES, val_tiles=[9])
    with pytest.raises(InvalidInputError, match="val_tiles"):
        build_dataset("colour_masks", tiles, "val", classes=CLASSES)


def test_dubai_defaults_have_five_classes(tiles):
    dataset = DubaiAerial(tiles, "val", val_tiles=["tile3"])
    assert dataset.info.class_names == ("building", "land", "road", "vegetation", "water")
    assert dataset.info.name == "dubai_aerial"
    assert isinstance(dataset, ColourMaskDataset)
    assert set(dataset[0]["mask"].unique().tolist()) == {0, 4, 255}


@pytest.mark.skipif(not DUBAI.is_dir(), reason="the real Dubai aerial data lives outside the repo")
def test_real_dubai_tile_masks_are_mostly_labelled():
    dataset = DubaiAerial(DUBAI, "val", val_tiles=[2], downscale=0.25)
    masks = np.concatenate([m.ravel() for m in dataset.masks])
    assert len(dataset) == 9
    assert (masks == 255).mean() < 0.05
    assert set(np.unique(masks)) <= {0, 1, 2, 3, 4, 255}


@pytest.mark.parametrize(("balance_tiles", "expected_tile1_share"), [(False, 960 / (960 + 432)), (True, 0.5)])
def test_colour_masks_draw_by_area_or_tiles_equally(tiles, balance_tiles, expected_tile1_share):
    # Training tiles 1 (two 20 x 24 parts) and 3 (two 12 x 18 parts); images of tile 1 have values 11 and 12.
    train = colour_dataset(tiles, "train", samples_per_epoch=4, balance_tiles=balance_tiles)
    rng = np.random.default_rng(0)
    draws = [train.load_sample(0, rng)["image"] for _ in range(3000)]
    tile1_share = np.mean([d.shape[1:] == (20, 24) for d in draws])
    assert tile1_share == pytest.approx(expected_tile1_share, abs=0.03)

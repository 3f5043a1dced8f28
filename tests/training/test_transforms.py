"""Joint augmentations keep image and mask aligned, pad with ignore, and normalise like the model card."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import InvalidInputError
from engine.model_card import ModelCard
from training.transforms import (
    ColourJitter,
    Compose,
    HorizontalFlip,
    Normalization,
    PadToMultiple,
    RandomRotate90,
    RandomScale,
    SmartCrop,
    VerticalFlip,
    build_train_transforms,
    cutmix_batch,
    cutmix_pair,
    mosaic,
    to_tensors,
)


def labelled_sample(mask: np.ndarray) -> dict:
    """Image whose band 0 equals the mask, so any geometric transform must keep them equal."""
    mask = np.asarray(mask, dtype=np.int64)
    image = np.stack([mask.astype(np.float32), np.zeros(mask.shape, np.float32)])
    return {"image": image, "mask": mask}


def assert_aligned(sample: dict, ignore: int = 255) -> None:
    labelled = sample["mask"] != ignore
    np.testing.assert_array_equal(sample["image"][0][labelled], sample["mask"][labelled])
    assert (sample["image"][:, ~labelled] == 0).all()


GRID = np.arange(12).reshape(3, 4)


def test_horizontal_flip_mirrors_columns():
    out = HorizontalFlip(p=1.0)(labelled_sample(GRID), np.random.default_rng(0))
    np.testing.assert_array_equal(out["mask"], [[3, 2, 1, 0], [7, 6, 5, 4], [11, 10, 9, 8]])
    assert_aligned(out)


def test_vertical_flip_mirrors_rows():
    out = VerticalFlip(p=1.0)(labelled_sample(GRID), np.random.default_rng(0))
    np.testing.assert_array_equal(out["mask"], [[8, 9, 10, 11], [4, 5, 6, 7], [0, 1, 2, 3]])
    assert_aligned(out)


def test_flip_with_zero_probability_is_identity():
    sample = labelled_sample(GRID)
    assert HorizontalFlip(p=0.0)(sample, np.random.default_rng(0)) is sample


def test_rotate90_is_a_quarter_turn_multiple_of_both():
    for seed in range(6):
        out = RandomRotate90(p=1.0)(labelled_sample(GRID), np.random.default_rng(seed))
        turns = [np.rot90(GRID, k) for k in (1, 2, 3)]
        assert any(t.shape == out["mask"].shape and (t == out["mask"]).all() for t in turns)
        assert_aligned(out)


def test_random_scale_half_takes_nearest_labels():
    mask = np.array([[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]])
    out = RandomScale(scales=(0.5,))(labelled_sample(mask), np.random.default_rng(0))
    # output pixel centres fall on input pixels 1 and 3 in each axis
    np.testing.assert_array_equal(out["mask"], [[5, 7], [13, 15]])
    assert out["image"].shape == (2, 2, 2)
    assert out["image"].dtype == np.float32


def test_random_scale_double_repeats_labels_and_keeps_constant_image():
    sample = {"image": np.full((3, 2, 3), 7, np.uint8), "mask": np.array([[0, 1, 2], [3, 4, 5]])}
    out = RandomScale(scales=(2.0,))(sample, np.random.default_rng(0))
    np.testing.assert_array_equal(out["mask"], np.kron(sample["mask"], np.ones((2, 2), int)))
    np.testing.assert_allclose(out["image"], 7.0)


def test_random_scale_range_stays_inside_bounds():
    scale = RandomScale(scale_range=(0.5, 1.5))
    for seed in range(10):
        out = scale(labelled_sample(np.zeros((20, 20))), np.random.default_rng(seed))
        assert 10 <= out["mask"].shape[0] <= 30


def test_random_scale_rejects_non_positive_factor():
    with pytest.raises(InvalidInputError):
        RandomScale(scales=(0.0, 1.0))


def test_smart_crop_pads_small_images_with_ignore():
    out = SmartCrop(size_px=5, max_tries=1)(labelled_sample(np.ones((3, 4))), np.random.default_rng(0))
    assert out["mask"].shape == (5, 5)
    assert (out["mask"][3:, :] == 255).all() and (out["mask"][:, 4:] == 255).all()
    assert (out["mask"][:3, :4] == 1).all()
    assert_aligned(out)


def test_smart_crop_redraws_crops_dominated_by_one_class():
    mask = np.zeros((8, 64), np.int64)
    mask[:, 60:] = 1  # only crops reaching column 60 contain two classes
    crop = SmartCrop(size_px=8, max_ratio=0.75, max_tries=400)
    for seed in range(10):
        out = crop(labelled_sample(mask), np.random.default_rng(seed))
        counts = np.bincount(out["mask"].ravel(), minlength=2)
        assert counts[1] > 0 and counts.max() / counts.sum() < 0.75
        assert_aligned(out)


def test_smart_crop_gives_up_after_max_tries():
    out = SmartCrop(size_px=4, max_tries=3)(labelled_sample(np.zeros((8, 8))), np.random.default_rng(0))
    assert out["mask"].shape == (4, 4)


def test_pad_to_multiple_uses_ignore():
    out = PadToMultiple(divisor_px=4)(labelled_sample(np.ones((5, 3))), np.random.default_rng(0))
    assert out["mask"].shape == (8, 4)
    assert (out["mask"][5:] == 255).all() and (out["mask"][:, 3:] == 255).all()


def test_mosaic_builds_four_quadrants_from_four_samples():
    parts = [labelled_sample(np.full((16, 20), k)) for k in range(4)]
    out = mosaic(parts, np.random.default_rng(1))
    assert out["mask"].shape == (16, 20)
    assert_aligned(out)
    # the centre stays in the middle half: every sample contributes
    assert set(np.unique(out["mask"])) == {0, 1, 2, 3}
    assert out["mask"][0, 0] == 0 and out["mask"][-1, -1] == 3


def test_mosaic_pads_small_parts_with_ignore():
    parts = [labelled_sample(np.full((16, 16), 1))] + [labelled_sample(np.full((2, 2), 2))] * 3
    out = mosaic(parts, np.random.default_rng(3))
    assert (out["mask"] == 255).any()
    assert_aligned(out)


def test_mosaic_needs_four():
    with pytest.raises(InvalidInputError):
        mosaic([labelled_sample(GRID)] * 3, np.random.default_rng(0))


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000))
def test_cutmix_pair_pastes_labels_with_the_image(seed):
    first = labelled_sample(np.zeros((12, 10)))
    second = labelled_sample(np.full((12, 10), 3))
    out = cutmix_pair(first, second, np.random.default_rng(seed))
    assert_aligned(out)
    pasted = np.argwhere(out["mask"] == 3)
    if len(pasted):
        (top, left), (bottom, right) = pasted.min(0), pasted.max(0)
        assert (out["mask"][top : bottom + 1, left : right + 1] == 3).all()  # one rectangle


def test_cutmix_batch_keeps_inputs_and_alignment():
    masks = torch.stack([torch.zeros(8, 8, dtype=torch.int64), torch.full((8, 8), 2, dtype=torch.int64)])
    images = masks[:, None].float().repeat(1, 3, 1, 1)
    for seed in range(5):
        mixed_images, mixed_masks = cutmix_batch(images, masks, np.random.default_rng(seed), p=1.0)
        assert torch.equal(mixed_images[:, 0], mixed_masks.float())
    assert (masks[0] == 0).all() and (masks[1] == 2).all()
    same_images, _ = cutmix_batch(images, masks, np.random.default_rng(0), p=0.0)
    assert same_images is images


def test_normalization_matches_hand_computation():
    norm = Normalization(mean=(0.5,), std=(0.25,), value_range=(0.0, 255.0))
    out = norm(np.array([[[0, 255]]], np.uint8))
    np.testing.assert_allclose(out, [[[-2.0, 2.0]]])
    assert out.dtype == np.float32


def test_normalization_from_card_uses_value_range():
    card = ModelCard(
        name="t",
        architecture="external",
        class_names=("a",),
        class_colors=("#000000",),
        input_bands=("nir", "red"),
        input_dtype="uint16",
        input_value_range=(0.0, 1000.0),
        norm_mean=(0.1, 0.2),
        norm_std=(0.5, 0.5),
    )
    out = Normalization.from_card(card)(np.full((2, 1, 1), 600, np.uint16))
    np.testing.assert_allclose(out[:, 0, 0], [(0.6 - 0.1) / 0.5, (0.6 - 0.2) / 0.5], rtol=1e-6)


def test_normalization_rejects_band_mismatch():
    with pytest.raises(InvalidInputError, match="bands"):
        Normalization()(np.zeros((4, 2, 2), np.uint8))


def test_to_tensors_types():
    out = to_tensors({"image": np.zeros((3, 2, 2), np.uint8), "mask": np.zeros((2, 2), np.int64)}, Normalization())
    assert out["image"].dtype == torch.float32 and out["image"].shape == (3, 2, 2)
    assert out["mask"].dtype == torch.int64
    assert out["image"][0, 0, 0].item() == pytest.approx(-0.485 / 0.229, rel=1e-5)


def test_train_recipe_outputs_crop_size():
    transforms = build_train_transforms(crop_size_px=16, scales=(0.5, 1.0, 1.5))
    assert isinstance(transforms, Compose)
    sample = {"image": np.zeros((3, 24, 30), np.uint8), "mask": np.arange(720).reshape(24, 30) % 5}
    for seed in range(5):
        out = transforms(sample, np.random.default_rng(seed))
        assert out["image"].shape == (3, 16, 16) and out["mask"].shape == (16, 16)
        assert set(np.unique(out["mask"])) <= {0, 1, 2, 3, 4, 255}


def photo_sample(seed: int = 0, dtype: type = np.uint8) -> dict:
    rng = np.random.default_rng(seed)
    image = rng.integers(20, 236, size=(3, 24, 24)).astype(dtype)
    return {"image": image, "mask": rng.integers(0, 5, size=(24, 24)).astype(np.int64)}


def test_colour_jitter_changes_colours_only_and_keeps_dtype_range_and_mask():
    sample = photo_sample()
    out = ColourJitter(0.3, p=1.0)(sample, np.random.default_rng(1))
    assert out["image"].dtype == np.uint8 and out["image"].shape == sample["image"].shape
    np.testing.assert_array_equal(out["mask"], sample["mask"])
    assert np.abs(out["image"].astype(int) - sample["image"].astype(int)).mean() > 1.0
    # Photometric only: the ranking of pixels within a band survives brightness/contrast/gain (up to rounding).
    band_in, band_out = sample["image"][0].ravel().astype(float), out["image"][0].ravel().astype(float)
    assert np.corrcoef(band_in, band_out)[0, 1] > 0.9


def test_colour_jitter_clips_to_the_value_range_of_float_data():
    sample = {"image": np.full((3, 4, 4), 0.95, np.float32), "mask": np.zeros((4, 4), np.int64)}
    outs = [ColourJitter(0.5, p=1.0, value_range=(0.0, 1.0))(sample, np.random.default_rng(s)) for s in range(20)]
    assert all(o["image"].dtype == np.float32 for o in outs)
    assert all(0.0 <= o["image"].min() and o["image"].max() <= 1.0 for o in outs)
    assert any(o["image"].max() == 1.0 for o in outs)  # some draws brighten past the top and are clipped


def test_colour_jitter_is_reproducible_and_off_at_zero_strength():
    sample = photo_sample(3)
    first = ColourJitter(0.2, p=1.0)(sample, np.random.default_rng(7))
    second = ColourJitter(0.2, p=1.0)(sample, np.random.default_rng(7))
    np.testing.assert_array_equal(first["image"], second["image"])
    assert ColourJitter(0.0, p=1.0)(sample, np.random.default_rng(7)) is sample


def test_colour_jitter_handles_a_fourth_band():
    # Saturation mixes only bands 0-2; a bright band 3 (e.g. NIR) keeps its own level, it is not pulled to grey.
    grey = np.full((3, 8, 8), 100, np.uint8)
    nir = np.full((1, 8, 8), 200, np.uint8)
    sample = {"image": np.concatenate([grey, nir]), "mask": np.zeros((8, 8), np.int64)}
    out = ColourJitter(0.3, p=1.0)(sample, np.random.default_rng(2))
    assert out["image"].shape == (4, 8, 8)
    assert out["image"][3].mean() > out["image"][:3].mean()


@pytest.mark.parametrize(("strength", "value_range"), [(-0.1, (0.0, 255.0)), (1.0, (0.0, 255.0)), (0.2, (5.0, 5.0))])
def test_colour_jitter_rejects_bad_settings(strength, value_range):
    with pytest.raises(InvalidInputError):
        ColourJitter(strength, value_range=value_range)


def test_train_recipe_with_colour_jitter_keeps_masks_and_changes_images():
    sample = {"image": np.full((3, 24, 30), 120, np.uint8), "mask": np.arange(720).reshape(24, 30) % 5}
    plain = build_train_transforms(crop_size_px=16, scales=(1.0,), flip_p=0.0, rot90_p=0.0)
    jittered = build_train_transforms(crop_size_px=16, scales=(1.0,), flip_p=0.0, rot90_p=0.0, colour_jitter=0.3)
    changed = 0
    for seed in range(6):
        a = plain(sample, np.random.default_rng(seed))
        b = jittered(sample, np.random.default_rng(seed))
        np.testing.assert_array_equal(a["mask"], b["mask"])
        changed += int(not np.array_equal(a["image"], b["image"]))
    assert changed >= 3  # p = 0.8 per sample

from __future__ import annotations

import numpy as np
import pytest

from lung_tumor.errors import LungTumorError
from lung_tumor.training.data import build_augmentation

STRONG = {
    "affine_prob": 1.0,
    "rotate_deg": 45,
    "scale": [0.85, 1.15],
    "translate_fraction": 0.1,
    "flip_prob": 0.5,
    "elastic_prob": 1.0,
}


def _disk_item(size: int = 64) -> dict:
    yy, xx = np.mgrid[:size, :size]
    disk = (((yy - 28) ** 2 + (xx - 36) ** 2) <= 12**2).astype(np.float32)[None]
    return {"image": disk.copy(), "label": disk.copy(), "case": "lung_001", "slice": 3}


def test_label_stays_binary_and_aligned_with_the_image():
    augment = build_augmentation(STRONG, image_size=64, seed=1)
    changed = 0
    for _ in range(10):
        item = _disk_item()
        out = augment(item)
        image, label = np.asarray(out["image"]), np.asarray(out["label"])
        assert set(np.unique(label)) <= {0.0, 1.0}
        assert label.sum() > 0
        # the image equals the label before augmentation: after it, the bilinear image thresholded at 0.5
        # must cover the nearest-neighbour label almost exactly
        overlap = ((image > 0.5) & (label > 0.5)).sum() / ((image > 0.5) | (label > 0.5)).sum()
        assert overlap > 0.9
        changed += not np.array_equal(label, item["label"])
        assert out["case"] == "lung_001" and out["slice"] == 3
    assert changed >= 8


def test_same_seed_same_result_different_seed_different_result():
    outs = [np.asarray(build_augmentation(STRONG, image_size=64, seed=s)(_disk_item())["image"]) for s in (5, 5, 6)]
    np.testing.assert_array_equal(outs[0], outs[1])
    assert not np.array_equal(outs[0], outs[2])


def test_intensity_augmentation_leaves_the_label_alone():
    augment = build_augmentation(
        {"affine_prob": 0.0, "elastic_prob": 0.0, "intensity_prob": 1.0}, image_size=64, seed=0
    )
    item = _disk_item()
    out = augment(item)
    np.testing.assert_array_equal(np.asarray(out["label"]), item["label"])
    assert not np.array_equal(np.asarray(out["image"]), item["image"])


def test_disabled_augmentation_is_identity():
    item = _disk_item()
    out = build_augmentation({"enabled": False}, image_size=64)(item)
    np.testing.assert_array_equal(np.asarray(out["image"]), item["image"])


@pytest.mark.parametrize(
    "section",
    [{"affine_prob": 1.5}, {"scale": [1.2, 0.8]}, {"rotate_deg": 270}, {"elastic_spacing": 1}, {"rotation": 10}],
)
def test_bad_values_are_user_errors(section):
    with pytest.raises(LungTumorError):
        build_augmentation(section, image_size=64)


def test_flip_mirrors_left_right_which_is_the_last_axis_of_a_cached_slice():
    augment = build_augmentation({"affine_prob": 0.0, "elastic_prob": 0.0, "flip_prob": 1.0}, image_size=64, seed=0)
    item = _disk_item()
    out = augment(item)
    np.testing.assert_array_equal(np.asarray(out["image"]), item["image"][..., ::-1])
    np.testing.assert_array_equal(np.asarray(out["label"]), item["label"][..., ::-1])


def test_tumour_centred_patches_show_the_tumour_and_match_the_image():
    plain = {"affine_prob": 0.0, "elastic_prob": 0.0, "flip_prob": 0.0}
    always = build_augmentation({**plain, "crop_size": 24, "crop_tumour_prob": 1.0}, image_size=64, seed=0)
    never = build_augmentation({**plain, "crop_size": 24, "crop_tumour_prob": 0.0}, image_size=64, seed=0)
    for _ in range(40):
        out = always(_disk_item())
        image, label = np.asarray(out["image"]), np.asarray(out["label"])
        assert image.shape == label.shape == (1, 24, 24)
        np.testing.assert_array_equal(image, label)  # the same window of image and label
        # the patch centre is a tumour pixel, or a background one with crop_tumour_prob 0
        assert label[0, 12, 12] == 1
        assert np.asarray(never(_disk_item())["label"])[0, 12, 12] == 0
    # a slice without tumour gives a random patch
    empty = {"image": np.ones((1, 64, 64), np.float32), "label": np.zeros((1, 64, 64), np.float32)}
    assert np.asarray(always(empty)["image"]).shape == (1, 24, 24)


@pytest.mark.parametrize("crop", [4, 65, 2.5, True])
def test_bad_crop_size_is_refused(crop):
    with pytest.raises(LungTumorError, match="augmentation.crop_size"):
        build_augmentation({"crop_size": crop}, image_size=64)

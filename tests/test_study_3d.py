"""scripts/study_3d.py: the 1.25 mm grid and back, the training cubes, and the component scores of its grid."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest

from tests.conftest import load_script


@pytest.fixture(scope="module")
def study():
    return load_script("study_3d")


@pytest.mark.parametrize("signs", [(1, 1, 1), (-1, -1, 1), (1, -1, -1)])  # RAS, LPS and a flipped head-foot axis
def test_the_grid_is_ras_at_1_25_mm_and_comes_back_onto_the_scans_own_voxels(study, tmp_path, signs) -> None:
    spacing = np.array([0.625, 0.625, 2.5])
    affine = np.diag([*(np.array(signs) * spacing), 1.0])
    shape = (64, 48, 12)
    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).astype(np.float64)
    world = index @ affine[:3, :3].T
    hu = (-900.0 + 10.0 * world[..., 0] + 20.0 * world[..., 2]).astype(np.int16)  # rises to the left and the head
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(hu, affine), path)
    array, found_spacing, back = study.oriented(path, "image")
    np.testing.assert_allclose(found_spacing, spacing)
    grid = study.resize(array, study.grid_shape(array.shape, found_spacing), "trilinear")
    assert grid.shape == (32, 24, 24)
    # RAS: the values rise along the first axis (x) and the third (z) whatever the file's own axes
    assert (np.diff(grid[4:-4, 12, 12]) > 0).all() and (np.diff(grid[16, 12, 4:-4]) > 0).all()
    restored = nib.orientations.apply_orientation(study.resize(grid, array.shape, "trilinear"), back)
    inner = (slice(4, -4), slice(4, -4), slice(2, -2))
    np.testing.assert_allclose(restored[inner], hu[inner], atol=3.0)


def _prepared(tmp_path, study):
    image = np.full((80, 80, 80), 0.0, np.float32)  # soft tissue
    image[10:70, 10:70, 10:70] = -850.0  # lung
    image[38:44, 38:44, 38:44] = 40.0  # a 6-voxel nodule
    label = np.zeros(image.shape, np.uint8)
    label[38:44, 38:44, 38:44] = 1
    image_path, label_path = tmp_path / "image.nii.gz", tmp_path / "label.nii.gz"
    affine = np.diag([1.25, 1.25, 1.25, 1.0])
    nib.save(nib.Nifti1Image(image.astype(np.int16), affine), image_path)
    nib.save(nib.Nifti1Image(label, affine), label_path)
    folder = tmp_path / "prepared"
    study.prepare_case(image_path, label_path, folder)
    return folder


def test_prepare_keeps_lesion_lung_and_body_points_and_the_sampler_draws_cubes_around_them(study, tmp_path) -> None:
    folder = _prepared(tmp_path, study)
    points = np.load(folder / "points.npz")
    label = np.load(folder / "label.npy")
    image = np.load(folder / "image.npy")
    assert label.sum() == 216 and (label[tuple(points["lesion_0"].T)] == 1).all()
    assert (image[tuple(points["lung"].T)] == -850).all() and len(points["lung"]) == study.POINTS
    sampler = study.CubeSampler([folder], seed=0)
    x, y = sampler.batch(16)
    assert x.shape == y.shape == (16, 1, study.PATCH, study.PATCH, study.PATCH)
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    with_nodule = [int(y[i].sum()) for i in range(16) if y[i].sum() > 0]
    assert with_nodule and all(n == 216 for n in with_nodule)  # whole: the cube's centre lies within 16 voxels
    # a cube around a corner voxel is padded with air and no label
    cube, cube_label = sampler.cube(sampler.cases[0], np.array([0, 0, 0]))
    assert (cube[:20, :20, :20] == -1024).all() and cube_label.sum() == 0


def test_scores_add_the_networks_lesions_to_the_pair_and_count_what_each_setting_keeps(study) -> None:
    truth = np.zeros((60, 60, 60), bool)
    truth[5:15, 5:15, 5:15] = True  # a large lesion the pair finds (1000 voxels)
    truth[30:34, 30:34, 30:34] = True  # a 5 mm nodule the pair misses (64 voxels of 1.25 mm: 125 mm3)
    pair = np.zeros_like(truth)
    pair[5:15, 5:15, 5:14] = True  # 900 voxels of the large lesion
    pair[20:24, 50:54, 20:24] = True  # and a false lesion of its own (64 voxels)
    probability = np.zeros(truth.shape, np.float32)
    probability[30:34, 30:34, 30:34] = 0.8  # the nodule
    probability[50:53, 50:53, 50:53] = 0.95  # a false lesion of its own, 27 voxels (52.7 mm3)
    probability[20:24, 50:54, 20:24] = 0.7  # the pair's false lesion again: no second false lesion
    spacing = (1.25, 1.25, 1.25)
    case = study.case_components(probability, truth, pair, spacing)
    assert case["large"] == [True, True] and case["pair_hits"] == {1} and case["pair_false"] == 1
    empty = study.case_components(np.zeros_like(probability), np.zeros_like(truth), np.zeros_like(pair), spacing)
    cases = [case, empty]

    def dice(pred: int, overlap: int) -> float:
        return 2 * overlap / (pred + 1064)

    pair_only = study.score_setting(cases, 0.5, math.inf, None, True)
    assert pair_only["found"] == "1/2" and pair_only["false_per_scan"] == 0.5
    assert pair_only["objective"] == pytest.approx((dice(964, 900) + 1) / 2, abs=1e-4)
    both = study.score_setting(cases, 0.5, 0.0, None, True)
    assert both["found"] == "2/2" and both["false_per_scan"] == 1.0
    assert both["tumour_dice"] == pytest.approx(dice(964 + 64 + 27, 900 + 64), abs=1e-4)
    bigger = study.score_setting(cases, 0.5, 60.0, None, True)  # the 52.7 mm3 false lesion dropped
    assert bigger["found"] == "2/2" and bigger["false_per_scan"] == 0.5
    above = study.score_setting(cases, 0.9, 0.0, None, True)  # only the 0.95 false lesion passes 0.9
    assert above["found"] == "1/2" and above["false_per_scan"] == 1.0
    alone = study.score_setting(cases, 0.5, 0.0, None, False)
    assert alone["found"] == "1/2" and alone["false_per_scan"] == 1.0
    assert alone["tumour_dice"] == pytest.approx(dice(64 + 27 + 64, 64), abs=1e-4)
    capped = study.score_setting(cases, 0.5, 0.0, 0.06, True)  # at most 60 mm3 added: not the 125 mm3 nodule
    assert capped["found"] == "1/2" and capped["false_per_scan"] == 1.0
    # the pair's own probability: 0.4 at the nodule's centre, 0.2 over its own false lesion, nothing elsewhere
    pair_probability = np.zeros(truth.shape, np.float32)
    pair_probability[31, 31, 31] = 0.4
    pair_probability[51, 51, 51] = 0.2
    supported = study.case_components(probability, truth, pair, spacing, pair_probability)
    assert [c["support"] for c in supported["components"][0.5]] == pytest.approx([0.0, 0.4, 0.2])
    cases = [supported, empty]
    assert study.score_setting(cases, 0.5, 0.0, None, True, support=0.0) == {**both, "support": 0.0}
    vouched = study.score_setting(cases, 0.5, 0.0, None, True, support=0.3)  # the nodule kept, its false lesion not
    assert vouched["found"] == "2/2" and vouched["false_per_scan"] == 0.5
    assert vouched["tumour_dice"] == pytest.approx(dice(964 + 64, 900 + 64), abs=1e-4)
    assert study.score_setting(cases, 0.5, 0.0, None, True, support=0.15)["false_per_scan"] == 1.0


def test_mining_keeps_false_lesions_only_and_the_sampler_centres_a_share_of_cubes_on_them(study, tmp_path) -> None:
    folder = _prepared(tmp_path, study)
    label = np.load(folder / "label.npy") > 0
    probability = np.zeros(label.shape, np.float32)
    probability[36:46, 36:46, 36:46] = 0.9  # over the nodule and beyond it: a true lesion, not mined
    probability[60:64, 20:24, 20:24] = 0.8  # a false lesion of 64 voxels
    probability[20:22, 60:62, 60:62] = 0.9  # 8 voxels: under MINE_MIN_VOXELS
    probability[20:24, 20:24, 60:64] = 0.4  # under MINE_THRESHOLD
    found = study.hard_negatives(probability, label, np.random.default_rng(0))
    assert list(found) == ["false_0"] and len(found["false_0"]) == 64
    assert (found["false_0"].min(0) == [60, 20, 20]).all() and (found["false_0"].max(0) == [63, 23, 23]).all()
    hard_dir = tmp_path / "hard"
    hard_dir.mkdir()
    np.savez(hard_dir / f"{folder.name}.npz", **found)
    plain = study.CubeSampler([folder], seed=1)
    assert plain.hard_fraction == 0.0
    centres = []

    class Recording(study.CubeSampler):
        def cube(self, case, centre):
            centres.append(np.asarray(centre))
            return super().cube(case, centre)

    sampler = Recording([folder], seed=1, hard_dir=hard_dir, hard_fraction=0.5)
    assert sampler.hard == [(0, 0)]
    sampler.batch(200)
    near = sum(bool((np.abs(c - [61.5, 21.5, 21.5]) <= 10).all()) for c in centres)
    assert 70 <= near <= 130  # about half the cubes are centred on the false lesion (within the 8-voxel jitter)

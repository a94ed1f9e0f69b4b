"""scripts/study_candidates.py: the candidates and the cubes around them that its classifier sees."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import load_script


@pytest.fixture(scope="module")
def study():
    return load_script("study_candidates")


def test_candidates_are_the_components_above_the_threshold_with_centroid_peak_and_size(study) -> None:
    probability = np.zeros((20, 20, 10), np.float32)
    probability[2:5, 3:6, 1:3] = 0.3  # 18 voxels, centroid (3, 4, 1.5)
    probability[3, 4, 2] = 0.9
    probability[12:14, 15:17, 6:9] = 0.2  # 12 voxels
    probability[0, 19, 9] = 0.1  # below the threshold
    labels, found = study.candidates(probability, 0.15)
    assert len(found) == 2 and labels.max() == 2
    (first, centre_1, peak_1, size_1), (_, centre_2, peak_2, size_2) = sorted(found, key=lambda c: c[3], reverse=True)
    np.testing.assert_allclose(centre_1, [3.0, 4.0, 1.5])
    np.testing.assert_allclose(centre_2, [12.5, 15.5, 7.0])
    assert (peak_1, size_1, size_2) == (pytest.approx(0.9), 18, 12) and peak_2 == pytest.approx(0.2)
    assert np.count_nonzero(labels == first) == 18


@pytest.mark.parametrize("signs", [(1, 1, 1), (-1, -1, 1)])  # RAS and LPS voxel axes
def test_cube_samples_the_world_around_the_centre_whatever_the_voxel_axes(study, signs) -> None:
    spacing = np.array([0.7, 0.7, 2.5])
    affine = np.diag([*(np.array(signs) * spacing), 1.0])
    affine[:3, 3] = [-100.0, 50.0, 10.0]
    shape = (300, 300, 60)
    # a volume whose value is the world x coordinate plus twice the world z: trilinear sampling is exact on it
    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).astype(np.float64)
    world = index @ affine[:3, :3].T + affine[:3, 3]
    volume = (world[..., 0] + 2 * world[..., 2]).astype(np.float32)
    centre_voxel = np.array([150.0, 140.0, 30.0])
    centre = affine[:3, :3] @ centre_voxel + affine[:3, 3]
    cube = study.cube(volume, affine, centre_voxel, fill=0.0)
    steps = (np.arange(study.PATCH) - (study.PATCH - 1) / 2) * study.PATCH_MM
    expected = (centre[0] + steps)[:, None, None] + 2 * (centre[2] + steps)[None, None, :]
    np.testing.assert_allclose(cube, np.broadcast_to(expected, cube.shape), atol=1e-3)
    # a quarter turn about the body axis swaps the world x step for the world y step
    turned = study.cube(volume, affine, centre_voxel, fill=0.0, turn=np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1.0]]))
    np.testing.assert_allclose(turned[0, :, 0] - turned[0, 0, 0], -steps + steps[0], atol=1e-3)


def test_patch_scales_the_ct_to_0_1_and_keeps_the_probability(study) -> None:
    hu = np.full((40, 40, 40), -1000.0, np.float32)
    hu[15:25, 15:25, 15:25] = 400.0
    probability = np.zeros_like(hu)
    probability[15:25, 15:25, 15:25] = 0.8
    pair = study.patch(hu, probability, np.eye(4), np.array([19.5, 19.5, 19.5]))
    assert pair.shape == (2, study.PATCH, study.PATCH, study.PATCH) and pair.dtype == np.float16
    middle = study.PATCH // 2
    assert pair[0, middle, middle, middle] == pytest.approx(1.0) and pair[0, 0, 0, 0] == pytest.approx(0.0)
    assert pair[1, middle, middle, middle] == pytest.approx(0.8, abs=1e-3) and pair[1, 0, 0, 0] == 0

"""The varied synthetic engine: every tumour kind and finding, labels, HU ranges by design, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from lung_tumor.cli import main
from lung_tumor.data.synth import TRUTH_FILE, SyntheticCase, synthesize_case
from lung_tumor.data.tumour_model import TUMOUR_KINDS
from lung_tumor.data.variety import FINDINGS, LOCATIONS, TISSUE_CODES, has_tumour
from lung_tumor.errors import LungTumorError

CASES = range(3, 8)  # seed 0, small: the shortest run of cases that holds every tumour kind, location, finding
# synthesize_case(1, seed=0, size="small") as the engine wrote it before the varied engine (its sha256 of image +
# label + affine was a10d6ecf...cdc24d0fe): the image's HU summed over 8 slabs of slices along each axis, the tumour
# voxels and the affine. Not a checksum: OpenBLAS picks its kernels by CPU, and another kernel sums the smooth
# fields' matrix products in another order, which rounds an odd voxel to the next HU (1 voxel by 1 HU of this case
# on an AMD EPYC, where the checksum then differed; the same bytes again with OPENBLAS_CORETYPE=Sandybridge).
DEFAULT_CASE_1_SLAB_SUMS = [
    [-108759934, -91113010, -83276086, -60290918, -58428195, -82552707, -88165617, -117498904],
    [-130989324, -81022239, -49659360, -51049652, -46273985, -85164862, -114953727, -130972222],
    [-75436511, -84916435, -90149307, -90883248, -94072759, -93732120, -84423047, -76471944],
]
DEFAULT_CASE_1_TUMOUR_VOXELS = 131
DEFAULT_CASE_1_AFFINE = [
    [-3.0, 0.0, 0.0, 190.5],
    [0.0, -3.0, 0.0, 204.08356273626734],
    [0.0, 0.0, 5.3009080868919725, -212.45128609648108],
    [0.0, 0.0, 0.0, 1.0],
]
FINDING_CODES = [TISSUE_CODES[name] for name in FINDINGS]
TUMOUR_CODES = [TISSUE_CODES[name] for name in ("tumour_solid", "tumour_ground_glass", "tumour_cavity")]


@pytest.fixture(scope="module")
def varied() -> list[SyntheticCase]:
    return [synthesize_case(index, seed=0, size="small", variety="varied") for index in CASES]


def owners(case: SyntheticCase) -> tuple[np.ndarray, np.ndarray]:
    """Label voxels and, for each, the truth lesion it belongs to.

    Lesions never touch, so each 26-connected label component is given whole to the truth lesion nearest
    (in lesion radii) to most of its voxels.
    """
    components, _ = ndimage.label(case.label, structure=np.ones((3, 3, 3), bool))
    voxels = np.argwhere(case.label)
    centres = np.array([t["centre_voxel"] for t in case.tumours])
    radii = np.array([t["diameter_mm"] / 2 for t in case.tumours])
    mm = np.array(case.spacing)
    nearest = np.argmin(np.linalg.norm((voxels[:, None, :] - centres[None]) * mm, axis=2) / radii, axis=1)
    component = components[tuple(voxels.T)]
    owner = np.empty(len(voxels), int)
    for c in np.unique(component):
        owner[component == c] = np.bincount(nearest[component == c]).argmax()
    return voxels, owner


def inner_values(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """HU of the voxels of ``mask`` that are not on its in-plane border (all of them when none are inside)."""
    inner = ndimage.binary_erosion(mask, structure=np.ones((3, 3, 1), bool))
    return image[inner if inner.any() else mask]


def test_every_kind_location_and_finding(varied: list[SyntheticCase]) -> None:
    kinds = {t["kind"] for case in varied for t in case.tumours}
    locations = {t["location"] for case in varied for t in case.tumours}
    findings = {f["kind"] for case in varied for f in case.findings}
    assert kinds == set(TUMOUR_KINDS)
    assert locations == set(LOCATIONS)
    assert findings == set(FINDINGS)
    for case in varied:
        assert case.variety == "varied" and case.tissue is not None and case.tissue.shape == case.image.shape
        for finding in case.findings:  # each recorded finding is painted
            assert finding["voxels"] > 0 and (case.tissue == TISSUE_CODES[finding["kind"]]).any()


def test_labels_binary_aligned_and_findings_unlabelled(varied: list[SyntheticCase]) -> None:
    for case in varied:
        assert case.label.dtype == np.uint8 and set(np.unique(case.label)) <= {0, 1}
        assert case.label.shape == case.image.shape
        # the label is exactly the tumour parts; no finding voxel is labelled
        np.testing.assert_array_equal(case.label == 1, np.isin(case.tissue, TUMOUR_CODES))
        assert not case.label[np.isin(case.tissue, FINDING_CODES)].any()
        assert int(case.label.sum()) == sum(t["voxels"] for t in case.tumours)
        if not case.tumours:
            continue
        voxels, owner = owners(case)
        for k, tumour in enumerate(case.tumours):
            mine = voxels[owner == k]
            assert len(mine) == tumour["voxels"]
            np.testing.assert_allclose(mine.mean(axis=0), tumour["centre_voxel"], atol=1.0)
            assert tumour["kind"] in TUMOUR_KINDS and tumour["location"] in LOCATIONS


def test_tumour_sizes_suit_the_grid(varied: list[SyntheticCase]) -> None:
    for case in varied:
        px, _, dz = case.spacing
        for tumour in case.tumours:
            assert max(3.0, 3 * px, 2 * dz) - 0.01 <= tumour["diameter_mm"] <= 100.0


def test_finding_hu_as_designed(varied: list[SyntheticCase]) -> None:
    seen = set()
    for case in varied:
        for name in FINDINGS:
            mask = case.tissue == TISSUE_CODES[name]
            if not mask.any():
                continue
            seen.add(name)
            inner = float(np.median(inner_values(case.image, mask)))
            if name == "emphysema":
                assert inner < -930 and np.percentile(case.image[mask], 25) < -950, (case.case_id, inner)
            elif name == "ground_glass":
                assert -750 <= inner <= -400, (case.case_id, inner)
            elif name in ("effusion", "atelectasis"):
                assert -30 <= inner <= 80, (case.case_id, name, inner)
            elif name == "scar":
                assert inner > -650, (case.case_id, inner)  # thin bands, partial-volumed, denser than lung
        labels, count = ndimage.label(case.tissue == TISSUE_CODES["granuloma"])
        for k in range(1, count + 1):
            assert case.image[labels == k].max() > 200, case.case_id
    assert seen == set(FINDINGS)


def test_tumour_hu_as_designed(varied: list[SyntheticCase]) -> None:
    checked = set()
    for case in varied:
        if not case.tumours:
            continue
        voxels, owner = owners(case)
        for k, tumour in enumerate(case.tumours):
            mask = np.zeros(case.label.shape, bool)
            mask[tuple(voxels[owner == k].T)] = True
            parts = {
                name: mask & (case.tissue == TISSUE_CODES[f"tumour_{name}"])
                for name in ("solid", "ground_glass", "cavity")
            }
            kind = tumour["kind"]
            solid = float(np.median(inner_values(case.image, parts["solid"]))) if parts["solid"].any() else None
            halo = (
                float(np.median(inner_values(case.image, parts["ground_glass"])))
                if parts["ground_glass"].any()
                else None
            )
            if kind in ("solid", "lobulated", "spiculated"):
                assert solid is not None and solid > -100 and halo is None, (case.case_id, kind, solid)
            elif kind == "cavitary":
                assert parts["cavity"].any() and float(np.median(case.image[parts["cavity"]])) < -800
                assert solid is not None and solid > -100
            elif kind == "part-solid":
                assert solid is not None and solid > -100, (case.case_id, solid)
                assert halo is not None and -750 <= halo <= -300, (case.case_id, halo)
            else:
                assert solid is None and halo is not None and -750 <= halo <= -300, (case.case_id, halo)
            checked.add(kind)
    assert checked == set(TUMOUR_KINDS)


def test_same_seed_same_bytes_and_another_seed_differs(varied: list[SyntheticCase]) -> None:
    again = synthesize_case(CASES[0], seed=0, size="small", variety="varied")
    first = varied[0]
    for name in ("image", "label", "tissue", "affine"):
        np.testing.assert_array_equal(getattr(again, name), getattr(first, name))
    assert again.tumours == first.tumours and again.findings == first.findings
    other = synthesize_case(CASES[0], seed=1, size="small", variety="varied")
    assert other.image.shape != first.image.shape or not np.array_equal(other.image, first.image)


def test_default_output_unchanged() -> None:
    case = synthesize_case(1, seed=0, size="small")
    assert case.image.shape == (128, 128, 64) and case.image.dtype == np.int16
    image = case.image.astype(np.int64)
    for axis, expected in enumerate(DEFAULT_CASE_1_SLAB_SUMS):
        per_slice = image.sum(axis=tuple(a for a in range(3) if a != axis))
        slabs = np.add.reduceat(per_slice, np.arange(0, image.shape[axis], image.shape[axis] // 8))
        np.testing.assert_allclose(slabs, expected, rtol=0, atol=8)  # a few voxels rounded to the next HU at most
    assert abs(int(np.count_nonzero(case.label)) - DEFAULT_CASE_1_TUMOUR_VOXELS) <= 2
    np.testing.assert_allclose(case.affine, DEFAULT_CASE_1_AFFINE, rtol=1e-12, atol=1e-9)
    assert case.variety == "default" and case.findings == [] and case.tissue is None
    assert "kind" not in case.tumours[0]


def test_a_fifth_tumour_free(varied: list[SyntheticCase]) -> None:
    free = [not has_tumour(0, index) for index in range(100)]
    assert sum(free) == 20 and sum(free[:20]) == 4 and 3 <= sum(free[1:21]) <= 5
    assert [not has_tumour(3, index) for index in range(100)] != free  # which case is free depends on the seed
    for index, case in zip(CASES, varied, strict=True):
        assert bool(case.tumours) == has_tumour(0, index) and (case.label.sum() > 0) == bool(case.tumours)


def test_cli_varied_truth_file(tmp_path: Path) -> None:
    out = tmp_path / "varied"
    assert main(
        ["synth", "--out", str(out), "--cases", "1", "--test-cases", "0", "--variety", "varied", "--seed", "0"]
    ) in (0, None)
    truth = json.loads((out / TRUTH_FILE).read_text())
    assert truth["variety"] == "varied"
    case = truth["cases"]["lung_001"]
    reference = synthesize_case(1, seed=0, size="small", variety="varied")
    assert case["tumours"] == reference.tumours and case["findings"] == reference.findings
    assert all({"kind", "location", "diameter_mm", "volume_ml"} <= set(t) for t in case["tumours"])


def test_unknown_variety_refused(tmp_path: Path) -> None:
    with pytest.raises(LungTumorError, match="unknown variety"):
        synthesize_case(1, seed=0, size="small", variety="realistic")
    with pytest.raises(SystemExit):
        main(["synth", "--out", str(tmp_path / "x"), "--variety", "realistic"])


def test_varied_patient_under_a_varied_acquisition_keeps_kinds_and_labels() -> None:
    from lung_tumor.data.synth import draw_case_acquisition

    acquisition = draw_case_acquisition(2, 5, "small", "varied")
    case = synthesize_case(2, 5, "small", acquisition=acquisition, variety="varied")
    again = synthesize_case(2, 5, "small", acquisition=acquisition, variety="varied")
    assert np.array_equal(case.image, again.image) and np.array_equal(case.label, again.label)
    assert case.acquisition is acquisition and case.variety == "varied" and case.findings
    assert set(np.unique(case.label)) == {0, 1}
    assert all("kind" in tumour for tumour in case.tumours)
    assert sum(t["voxels"] for t in case.tumours) == int(case.label.sum())

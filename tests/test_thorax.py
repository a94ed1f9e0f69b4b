"""The lungs found once on a coarse grid (``lung_tumor.thorax``) against the slice-by-slice mask they replace.

The reference is the report's own former code (``tests/legacy_lung_mask.py``). Tolerance: the lung masks
agree to a Dice of at least 0.95 (0.96 to 0.998 measured), except the tight crop of a real thorax whose lungs
run off the image (0.90: the new mask keeps lung at the crop's edge that the old one lost, and holds 98% of the
old one); every report figure and contact flag is identical, and so is ``predict --lung-mask`` (but for 79 of
721,478 kept voxels on that crop, next to the lung the old mask lost).
"""

from __future__ import annotations

import json
from pathlib import Path

import chest_phantom as phantom
import nibabel as nib
import numpy as np
import pytest
from legacy_lung_mask import LegacyThorax, body_midline_x, lung_mask_near
from legacy_lung_mask import lung_mask as legacy_lung_mask
from scipy import ndimage
from test_inference import ORIENTATIONS, chest

from lung_tumor.data.synth import synthesize_case
from lung_tumor.inference import LUNG_MARGIN_MM, keep_near_lungs
from lung_tumor.report import CONTACT_DILATION_VOXELS, axial_axis, tissue_like_padding, tumour_report
from lung_tumor.thorax import coarse_factors, thorax_masks

CASES = range(1, 8)  # 12 lesions: inside the lung, against the chest wall, against the mediastinum


@pytest.fixture(scope="module")
def synthetic_cases() -> list:
    return [synthesize_case(index, seed=0, size="small") for index in CASES]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


def legacy_report(mask: np.ndarray, affine: np.ndarray, image: np.ndarray) -> dict:
    """The report as it was: the old lungs of the lesions' slab, the old midline."""
    lungs = lung_mask_near(mask, image, affine, CONTACT_DILATION_VOXELS + 1)
    report = tumour_report(mask, affine, image, thorax=LegacyThorax(lungs))
    report["midline_x_mm"] = body_midline_x(affine, mask.shape, image)[0]
    return report


def assert_same_report(mask: np.ndarray, affine: np.ndarray, image: np.ndarray) -> list[tuple[bool, bool]]:
    """Old and new reports are identical; returns the contact flags."""
    new = tumour_report(mask, affine, image)
    old = legacy_report(mask, affine, image)
    assert new["midline_x_mm"] == pytest.approx(old["midline_x_mm"], abs=1e-9)
    new.pop("midline_x_mm"), old.pop("midline_x_mm")
    assert new == old
    assert all(lesion["contact_note"] is None for lesion in new["lesions"])
    return [(lesion["touches_chest_wall"], lesion["touches_mediastinum"]) for lesion in new["lesions"]]


def plant_lesions(image: np.ndarray, affine: np.ndarray, radius: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Soft-tissue spheres (40 HU) on the middle axial slice of the old lungs: deepest in the lung, and
    reaching out of it on the lateral side and the medial side (chest wall and mediastinum)."""
    axis = axial_axis(affine)
    lungs = np.moveaxis(legacy_lung_mask(image, affine), axis, -1)
    k = lungs.shape[-1] // 2
    depth = ndimage.distance_transform_edt(lungs[..., k])
    lr = 0 if axis != 0 else 1  # the in-plane axis running left-right in these (L, P, S) test volumes
    near_edge = np.argwhere((depth >= radius - 2) & (depth <= radius))
    centre_lr = np.argwhere(lungs[..., k])[:, lr].mean()
    off_centre = np.abs(near_edge[:, lr] - centre_lr)
    centres = [np.unravel_index(np.argmax(depth), depth.shape), near_edge[np.argmax(off_centre)]]
    centres.append(near_edge[np.argmin(off_centre)])
    grid = np.indices(lungs.shape)
    mask = np.zeros(lungs.shape, dtype=np.uint8)
    for i, j in centres:
        mask[(grid[0] - i) ** 2 + (grid[1] - j) ** 2 + ((grid[2] - k) * 3) ** 2 <= radius**2] = 1
    planted = np.moveaxis(np.where(mask > 0, 40, np.moveaxis(image, axis, -1)), -1, axis).astype(image.dtype)
    return np.moveaxis(mask, -1, axis), planted


def assert_planted_flags(flags: list[tuple[bool, bool]]) -> None:
    """One lesion touches nothing, one the chest wall only, one the mediastinum (and maybe the wall too)."""
    assert len(flags) == 3
    assert (False, False) in flags and (True, False) in flags and any(mediastinum for _, mediastinum in flags)


def test_lung_masks_agree_on_synthetic_cases(synthetic_cases: list) -> None:
    for case in synthetic_cases:
        new = thorax_masks(case.image, case.affine).lungs()
        assert dice(new, legacy_lung_mask(case.image, case.affine)) >= 0.95, case.case_id


def test_reports_identical_on_synthetic_cases_in_two_voxel_orders(synthetic_cases: list) -> None:
    flags = []
    for case in synthetic_cases:
        flags += assert_same_report(case.label, case.affine, case.image)
    # the same anatomy stored with the axial axis first (S, L, P): other coarse factors, other axes
    case = synthetic_cases[-1]
    permute = np.array([[0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 1]])
    flags += assert_same_report(
        case.label.transpose(2, 0, 1), case.affine @ permute, np.ascontiguousarray(case.image.transpose(2, 0, 1))
    )
    # the cases hold lesions inside the lung, against the chest wall only, and against both
    assert {(False, False), (True, False), (True, True)} <= set(flags)
    assert len(flags) == 15


def test_planted_lesions_same_contacts_on_a_synthetic_case(synthetic_cases: list) -> None:
    case = synthetic_cases[2]
    mask, image = plant_lesions(case.image, case.affine)
    assert_planted_flags(assert_same_report(mask, case.affine, image))


def test_padding_outside_the_scan_circle_and_a_crop_change_nothing(synthetic_cases: list) -> None:
    case = synthetic_cases[0]
    lungs = thorax_masks(case.image, case.affine).lungs()
    padded = case.image.copy()
    x, y = np.mgrid[: padded.shape[0], : padded.shape[1]]
    padded[(x - 63.5) ** 2 + (y - 63.5) ** 2 > 60**2] = -3024
    np.testing.assert_array_equal(thorax_masks(padded, case.affine).lungs(), lungs)
    # crops whose lungs run off the image: on the left and the right; at the back, in a slab of 16 slices
    for box in (np.s_[30:100, :, :], np.s_[:, :72, 20:36]):
        assert lungs[box][[0, -1]].any() or lungs[box][:, [0, -1]].any()
        cropped = thorax_masks(np.ascontiguousarray(case.image[box]), case.affine).lungs()
        assert dice(cropped, lungs[box]) >= 0.97


def test_a_box_cutting_through_a_nodule_gives_the_whole_ct_lungs(synthetic_cases: list) -> None:
    case = synthetic_cases[2]  # lung_003: one nodule inside the lung
    assert case.tumours[0]["location"] == "central"
    thorax = thorax_masks(case.image, case.affine)
    lesion = ndimage.find_objects(case.label)[0]
    middle = (lesion[0].start + lesion[0].stop) // 2
    box = (slice(middle, lesion[0].stop + 5), slice(lesion[1].start - 5, lesion[1].stop + 5), lesion[2])
    part = thorax.lungs(box)
    np.testing.assert_array_equal(part, thorax.lungs()[box])
    assert part[case.label[box] > 0].all()  # the nodule, cut by the box's edge, is a hole of the lung all the same


def test_coarse_grid_is_at_most_3_mm() -> None:
    assert coarse_factors((0.96, 0.96, 1.06)) == (3, 3, 2)
    assert coarse_factors((0.703, 0.703, 2.5)) == (4, 4, 1)
    assert coarse_factors((2.8, 2.8, 5.0)) == (1, 1, 1)


def test_lung_filter_unchanged_on_the_inference_phantoms() -> None:
    for name in ("RAS", "LPS", "tilted"):
        image = chest((160, 140, 24))
        affine = ORIENTATIONS[name]
        mask = np.zeros(image.shape, np.uint8)
        mask[image == 30] = 1  # the nodule in the left lung
        mask[75:85, 2:6, 10:14] = 1  # far in the back wall
        mask[60:70, 62:72, 2:5] = 1  # in the mediastinum, next to both lungs
        assert_same_lung_filter(mask, image, affine)


def assert_same_lung_filter(mask: np.ndarray, image: np.ndarray, affine: np.ndarray, extra: float = 0.0) -> None:
    """``keep_near_lungs`` keeps what it kept with the old lungs, give or take ``extra`` (a fraction) of it."""
    margin = max(int(np.ceil(LUNG_MARGIN_MM / s)) + 1 for s in np.linalg.norm(affine[:3, :3], axis=0))
    old = keep_near_lungs(mask, image, affine, LegacyThorax(lung_mask_near(mask, image, affine, margin))) > 0
    new = keep_near_lungs(mask, image, affine) > 0
    assert 0 < old.sum() < mask.sum()
    assert (new ^ old).sum() <= extra * old.sum()


def load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    image = nib.load(path)
    return np.asarray(image.dataobj), image.affine


def test_real_lidc_slab(real_ct_dir: Path) -> None:
    image, affine = load(real_ct_dir / "lidc-idri-0001" / "ct.nii.gz")  # 16 slices, -2048 outside the circle
    assert dice(thorax_masks(image, affine).lungs(), legacy_lung_mask(image, affine)) >= 0.95
    nodule, _ = load(real_ct_dir / "lidc-idri-0001" / "nodule_mask_2readers.nii.gz")
    assert assert_same_report(nodule, affine, image) == [(True, False)]
    mask, planted = plant_lesions(image, affine, radius=8)
    assert_planted_flags(assert_same_report(mask, affine, planted))


def test_real_thorax_crop(real_ct_dir: Path) -> None:
    image, affine = load(real_ct_dir / "thorax-no-tumour" / "ct.nii.gz")
    new, old = thorax_masks(image, affine).lungs(), legacy_lung_mask(image, affine)
    assert dice(new, old) >= 0.88 and (new & old).sum() >= 0.97 * old.sum()
    mask, planted = plant_lesions(image, affine, radius=5)
    assert_planted_flags(assert_same_report(mask, affine, planted))
    soft_tissue = (image > -75).astype(np.uint8)  # the detector of tests/test_inference.py: vessels, heart, wall
    # the new lungs reach the crop's edge where the old ones stopped short: 79 of 721,478 kept voxels differ
    assert_same_lung_filter(soft_tissue, image, affine, extra=0.0005)


def phantom_in_scan_circle(padding_hu: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The chest phantom with three lesions, off the centre of a wider field whose reconstruction circle is
    padded with ``padding_hu`` outside (as a scanner writes it); CT, mask and affine."""
    hu, mask = phantom.chest(), np.zeros(phantom.SHAPE, dtype=bool)
    phantom.add_box(hu, mask, (166, 50, 24), (174, 58, 28))  # against the right lateral chest wall
    phantom.add_box(hu, mask, (77, 30, 32), (85, 36, 36))  # against the mediastinum
    phantom.add_sphere(hu, mask, (-45.0, 0.0, 10.0), 6.0)  # inside the left lung
    widen = ((60, 20), (40, 60), (0, 0))  # the body 20 mm right of and 15 mm behind the field's centre
    hu, mask = np.pad(hu, widen, constant_values=-1000.0), np.pad(mask, widen)
    affine = phantom.AFFINE.copy()
    affine[:3, 3] -= np.array([w[0] for w in widen]) * phantom.SPACING
    x = (np.arange(hu.shape[0]) - (hu.shape[0] - 1) / 2) * phantom.SPACING[0]
    y = (np.arange(hu.shape[1]) - (hu.shape[1] - 1) / 2) * phantom.SPACING[1]
    # a circle short of the field's edges: the padding is one ring round it in every slice
    radius = 0.45 * min(hu.shape[0] * phantom.SPACING[0], hu.shape[1] * phantom.SPACING[1])
    hu[x[:, None] ** 2 + y[None, :] ** 2 > radius**2] = padding_hu
    return np.round(hu).astype(np.int16), mask, affine


def test_a_padding_that_passes_for_tissue_is_no_body() -> None:
    """Outside the scan circle a scanner may write 0 HU: a ring that would be the largest 'soft tissue' of each
    slice, its hull taking in the air round the patient as lung. Recognised in the slices' corners, it is left
    out: the same lungs, midline and report as with -1024 HU padding."""
    air_ct, mask, affine = phantom_in_scan_circle(-1024.0)
    tissue_ct, _, _ = phantom_in_scan_circle(0.0)
    assert tissue_like_padding(air_ct, 2) is None and tissue_like_padding(phantom.chest(), 2) is None
    assert tissue_like_padding(tissue_ct, 2) == 0
    air, tissue = thorax_masks(air_ct, affine), thorax_masks(tissue_ct, affine)
    lung_ml = air.coarse_lungs.sum() * np.prod(phantom.SPACING) * np.prod(air.factors) / 1000
    assert 500 < lung_ml < 1000  # two 50 x 90 x 90 mm lungs, less the airway: about 810 ml
    np.testing.assert_array_equal(tissue.coarse_lungs, air.coarse_lungs)
    expected, found = tumour_report(mask, affine, air_ct), tumour_report(mask, affine, tissue_ct)
    assert expected["midline_x_mm"] == pytest.approx(0.0, abs=1.0)  # the body's centre, not the field's (-20 mm)
    assert found["midline_method"].endswith("less the scanner's padding of 0 HU outside the scan circle")
    found["midline_method"] = expected["midline_method"]
    assert json.dumps(found) == json.dumps(expected)
    assert [lesion["touches_chest_wall"] for lesion in found["lesions"]].count(True) == 1

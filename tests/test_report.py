"""The tumour spread report on synthetic masks with known geometry, in several orientations."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from lung_tumor.report import format_report, tumour_report, write_report

SPACING = (0.8, 0.8, 2.0)
RAS = np.diag([*SPACING, 1.0])


def ellipsoid(shape: tuple[int, int, int], centre: tuple[float, float, float], radius_voxels: float) -> np.ndarray:
    grid = np.indices(shape, dtype=float)
    distance2 = sum((grid[a] - centre[a]) ** 2 for a in range(3))
    return distance2 <= radius_voxels**2


def to_lps(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same anatomy stored with the first two voxel axes reversed (L,P,S voxel order)."""
    flipped = array[::-1, ::-1]
    flip = np.eye(4)
    flip[0, 0] = flip[1, 1] = -1
    flip[0, 3], flip[1, 3] = array.shape[0] - 1, array.shape[1] - 1
    return flipped, affine @ flip


def test_volume_and_longest_axial_diameter_of_an_ellipsoid() -> None:
    # a sphere of radius 8 voxels in a 0.8 x 0.8 x 2.0 mm grid: an ellipsoid of semi-axes 6.4, 6.4, 16 mm
    r = 8
    mask = ellipsoid((40, 40, 24), (20, 20, 12), r)
    report = tumour_report(mask, RAS)
    analytic_ml = 4 / 3 * math.pi * (r * 0.8) * (r * 0.8) * (r * 2.0) / 1000
    assert report["lesion_count"] == 1
    assert report["total_volume_ml"] == pytest.approx(analytic_ml, rel=0.05)
    lesion = report["lesions"][0]
    # edge to edge: the pixels whose centres lie on the radius count whole, so 2r + 1 pixels across (the truth,
    # 2r pixels, within one pixel)
    assert lesion["longest_axial_diameter_mm"] == pytest.approx((2 * r + 1) * 0.8)
    assert lesion["longest_axial_diameter_slice"] == 12
    assert lesion["axial_slice_range"] == [4, 20]
    assert lesion["craniocaudal_extent_mm"] == pytest.approx(17 * 2.0)
    assert lesion["equivalent_diameter_mm"] == pytest.approx((6 * lesion["volume_ml"] * 1000 / math.pi) ** (1 / 3))
    assert lesion["centroid_voxel"] == pytest.approx([20, 20, 12])


def test_diameter_with_rotated_in_plane_axes_and_axial_axis_first() -> None:
    # a 20 x 6 pixel rectangle, voxel order (z, y, x) and pixels 0.5 x 1.5 mm: the diagonal in mm, edge to edge:
    # centre to centre plus half a pixel at each end along the line (on the ellipse inscribed in the pixel)
    mask = np.zeros((5, 30, 30), dtype=bool)
    mask[2, 5:25, 10:16] = True
    affine = np.array([[0, 0, 0.5, 0], [0, 1.5, 0, 0], [3.0, 0, 0, 0], [0, 0, 0, 1]])
    lesion = tumour_report(mask, affine)["lesions"][0]
    along_y, along_x = 19 * 1.5, 5 * 0.5
    centres = math.hypot(along_y, along_x)
    pixel = 1 / math.hypot(along_y / centres / 1.5, along_x / centres / 0.5)
    assert lesion["longest_axial_diameter_mm"] == pytest.approx(centres + pixel)
    assert abs(lesion["longest_axial_diameter_mm"] - math.hypot(20 * 1.5, 6 * 0.5)) < 0.5
    assert lesion["axial_slice_range"] == [2, 2]
    assert lesion["craniocaudal_extent_mm"] == pytest.approx(3.0)
    assert lesion["volume_ml"] == pytest.approx(120 * 0.5 * 1.5 * 3.0 / 1000)


def test_two_lesions_largest_first() -> None:
    mask = ellipsoid((48, 48, 16), (12, 24, 8), 5) | ellipsoid((48, 48, 16), (36, 24, 8), 3)
    report = tumour_report(mask, RAS)
    assert report["lesion_count"] == 2
    assert [lesion["lesion"] for lesion in report["lesions"]] == [1, 2]
    assert report["lesions"][0]["volume_ml"] > report["lesions"][1]["volume_ml"]
    assert report["total_volume_ml"] == pytest.approx(sum(lesion["volume_ml"] for lesion in report["lesions"]))


def test_side_and_world_centroid_agree_for_ras_and_lps_storage() -> None:
    # RAS voxel order: index 0 grows towards the patient's right, so small i is the patient's left
    mask = ellipsoid((64, 48, 12), (12, 20, 6), 3) | ellipsoid((64, 48, 12), (50, 30, 6), 4)
    ras = tumour_report(mask, RAS)
    lps_mask, lps_affine = to_lps(mask, RAS)
    lps = tumour_report(lps_mask, lps_affine)
    assert ras["orientation"] == "RAS" and lps["orientation"] == "LPS"
    for a, b in zip(ras["lesions"], lps["lesions"], strict=True):
        assert a["side"] == b["side"]
        assert a["centroid_world_mm"] == pytest.approx(b["centroid_world_mm"])
        assert a["longest_axial_diameter_mm"] == pytest.approx(b["longest_axial_diameter_mm"])
    sides = {round(lesion["centroid_voxel"][0]): lesion["side"] for lesion in ras["lesions"]}
    assert sides == {50: "right", 12: "left"}


def phantom_chest(shape: tuple[int, int, int] = (128, 128, 12)) -> np.ndarray:
    """Body ellipse (40 HU) in air, two lungs (-850 HU); voxel axis 0 is the patient's right-left."""
    x, y = np.mgrid[: shape[0], : shape[1]]
    body = ((x - 64) / 55) ** 2 + ((y - 64) / 40) ** 2 < 1
    lungs = (((x - 40) / 18) ** 2 + ((y - 64) / 28) ** 2 < 1) | (((x - 88) / 18) ** 2 + ((y - 64) / 28) ** 2 < 1)
    image = np.where(body, 40.0, -1000.0)
    image[lungs] = -850.0
    return np.repeat(image[..., None], shape[2], axis=2)


def test_chest_wall_and_mediastinum_contacts_and_body_midline() -> None:
    image = phantom_chest()
    shape = image.shape
    central = ellipsoid(shape, (40, 64, 6), 4)  # inside the lung at x = 40
    lateral = ellipsoid(shape, (104, 64, 6), 4)  # against the lateral wall of the lung at x = 88 (edge 106)
    medial = ellipsoid(shape, (56, 50, 6), 3)  # against the mediastinum (lung at x = 40 ends at 58)
    mask = central | lateral | medial
    image[mask] = 40.0
    # shift the grid's world origin so that the image centre is not the body centre
    affine = RAS.copy()
    affine[0, 3] = -10.0
    report = tumour_report(mask, affine, image)
    assert report["midline_x_mm"] == pytest.approx(64 * 0.8 - 10.0, abs=0.1)
    by_x = {round(lesion["centroid_voxel"][0]): lesion for lesion in report["lesions"]}
    assert (by_x[40]["touches_chest_wall"], by_x[40]["touches_mediastinum"]) == (False, False)
    assert (by_x[104]["touches_chest_wall"], by_x[104]["touches_mediastinum"]) == (True, False)
    assert (by_x[56]["touches_chest_wall"], by_x[56]["touches_mediastinum"]) == (False, True)
    assert by_x[104]["side"] == "right" and by_x[40]["side"] == "left"

    without_ct = tumour_report(mask, affine)
    assert all(lesion["touches_chest_wall"] is None for lesion in without_ct["lesions"])
    assert "no CT" in without_ct["lesions"][0]["contact_note"]
    assert "image centre" in without_ct["midline_method"]


def test_text_report_contains_the_figures_and_files_are_written(tmp_path: Path) -> None:
    mask = ellipsoid((40, 40, 24), (20, 20, 12), 8)
    report = tumour_report(mask, RAS)
    text = format_report(report)
    lesion = report["lesions"][0]
    assert f"{report['total_volume_ml']:.2f} ml in 1 lesion(s)" in text
    assert f"{lesion['longest_axial_diameter_mm']:.1f} mm" in text
    assert f"{lesion['craniocaudal_extent_mm']:.1f} mm" in text
    assert "unknown: no CT given" in text
    json_path, text_path = write_report(report, tmp_path / "r" / "report.json", tmp_path / "r" / "report.txt")
    assert json.loads(json_path.read_text())["lesion_count"] == 1
    assert text_path.read_text() == text
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["report.json", "report.txt"]


def test_empty_mask() -> None:
    report = tumour_report(np.zeros((8, 8, 8)), RAS)
    assert report["lesion_count"] == 0 and report["total_volume_ml"] == 0.0
    assert "no tumour found" in format_report(report)


REAL_CT = Path(__file__).resolve().parents[2] / "shared" / "real_ct" / "lidc-idri-0001"


@pytest.mark.skipif(not (REAL_CT / "ct.nii.gz").is_file(), reason="shared real CT not available")
def test_real_lidc_nodule() -> None:
    import nibabel as nib

    image = nib.load(REAL_CT / "ct.nii.gz")
    mask = np.asarray(nib.load(REAL_CT / "nodule_mask_2readers.nii.gz").dataobj)
    report = tumour_report(mask, image.affine, np.asarray(image.dataobj, dtype=np.float32))
    # the README's figures: 6,281 voxels of 0.703 x 0.703 x 2.5 mm, one nodule of about 25 mm
    assert report["orientation"] == "LPS"
    assert report["lesion_count"] == 1
    assert report["total_volume_ml"] == pytest.approx(6281 * abs(np.linalg.det(image.affine[:3, :3])) / 1000)
    lesion = report["lesions"][0]
    assert lesion["equivalent_diameter_mm"] == pytest.approx(25, abs=1.5)
    # voxel axis 0 runs towards the patient's left (L,P,S) and the nodule lies at i > 300 of 512
    assert lesion["centroid_voxel"][0] > 300 and lesion["side"] == "left"
    assert lesion["longest_axial_diameter_mm"] >= lesion["equivalent_diameter_mm"]
    assert lesion["touches_chest_wall"] is not None

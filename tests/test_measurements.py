"""Calipers, RECIST 1.1, size-based T, attenuation, confidence and provenance on phantoms of known geometry."""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from test_inference import ORIENTATIONS, chest, main_predict, make_run, save

import lung_tumor
from lung_tumor.attenuation import lesion_attenuation
from lung_tumor.measurements import (
    is_measurable,
    lesion_measurements,
    select_targets,
    t_category,
)
from lung_tumor.provenance import DISCLAIMER
from lung_tumor.report import format_report, tumour_report

DOCS = Path(__file__).resolve().parents[1] / "docs" / "report_schema.md"


def rotation_z(degrees: float) -> np.ndarray:
    angle = np.deg2rad(degrees)
    rotation = np.eye(4)
    rotation[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    return rotation


SPACING = (0.7, 0.9, 2.5)
GRIDS = {  # the same anisotropic voxels stored in several orders and orientations
    "RAS": np.diag([*SPACING, 1.0]),
    "LPS": np.array([[-0.7, 0, 0, 0], [0, -0.9, 0, 0], [0, 0, 2.5, 0], [0, 0, 0, 1]]),
    "LPI": np.array([[-0.7, 0, 0, 0], [0, -0.9, 0, 0], [0, 0, -2.5, 0], [0, 0, 0, 1]]),
    "rotated 30": rotation_z(30) @ np.diag([*SPACING, 1.0]),
    "axial first": np.array([[0, 0, 0.7, 0], [0, 0.9, 0, 0], [2.5, 0, 0, 0], [0, 0, 0, 1]]),
}


def grid_world(shape: tuple[int, int, int], affine: np.ndarray) -> np.ndarray:
    """(3, X, Y, Z) world RAS mm of every voxel centre."""
    index = np.indices(shape, dtype=float)
    return np.einsum("ij,j...->i...", affine[:3, :3], index) + affine[:3, 3, None, None, None]


def centred(shape: tuple[int, int, int], affine: np.ndarray) -> np.ndarray:
    """The affine shifted so that world (0, 0, 0) lies at the volume's centre voxel."""
    moved = affine.copy()
    moved[:3, 3] = -affine[:3, :3] @ ((np.asarray(shape) - 1) / 2)
    return moved


def world_ellipsoid(shape: tuple[int, int, int], affine: np.ndarray, semi_axes_mm: tuple[float, float, float]):
    x, y, z = grid_world(shape, affine)
    a, b, c = semi_axes_mm
    return (x / a) ** 2 + (y / b) ** 2 + (z / c) ** 2 <= 1


def shape_for(affine: np.ndarray, extent_mm: float = 60.0) -> tuple[int, int, int]:
    return tuple(int(extent_mm / s) | 1 for s in np.linalg.norm(affine[:3, :3], axis=0))


# ---------------------------------------------------------------------------------------------- diameters


@pytest.mark.parametrize("name", list(GRIDS))
def test_ellipsoid_diameters_within_one_voxel_on_every_grid(name: str) -> None:
    # semi-axes 9 mm along x (right-left), 5 mm along y, 6 mm along z: long axial 18, short 10, 3D 18, CC 12
    shape = shape_for(GRIDS[name])
    affine = centred(shape, GRIDS[name])
    mask = world_ellipsoid(shape, affine, (9.0, 5.0, 6.0))
    lesion = tumour_report(mask, affine)["lesions"][0]
    pixel = max(SPACING[:2])
    assert lesion["longest_axial_diameter_mm"] == pytest.approx(18.0, abs=pixel)
    assert lesion["short_axis_diameter_mm"] == pytest.approx(10.0, abs=pixel)
    assert lesion["greatest_3d_diameter_mm"] == pytest.approx(18.0, abs=pixel)
    assert lesion["craniocaudal_extent_mm"] == pytest.approx(12.0, abs=SPACING[2])
    # the long axis runs right-left: its LPS endpoints differ in x by about the diameter, not in y or z
    (x0, y0, z0), (x1, y1, z1) = lesion["longest_axial_diameter_endpoints_lps_mm"]
    assert abs(x1 - x0) == pytest.approx(18.0, abs=pixel) and abs(y1 - y0) < 3.0 and z0 == z1
    assert abs(z0) < SPACING[2]  # on the central slice


def test_box_diameters_are_exact_edge_to_edge() -> None:
    # a 20 x 8 x 3 voxel box of 0.7 x 0.9 x 2.5 mm: 14.0 x 7.2 x 7.5 mm
    affine = GRIDS["RAS"]
    mask = np.zeros((40, 30, 10), dtype=bool)
    mask[10:30, 10:18, 4:7] = True
    lesion = tumour_report(mask, affine)["lesions"][0]
    diagonal = math.hypot(14.0, 7.2)
    assert lesion["longest_axial_diameter_mm"] == pytest.approx(diagonal, abs=0.5)
    assert lesion["longest_axial_diameter_mm"] > math.hypot(19 * 0.7, 7 * 0.9) + 0.5  # more than centre to centre
    # 3D: within one voxel (its largest side, 2.5 mm); a diagonal through anisotropic boxes comes out short
    assert lesion["greatest_3d_diameter_mm"] == pytest.approx(math.hypot(14.0, 7.2, 7.5), abs=2.5)
    assert lesion["greatest_3d_diameter_mm"] > math.hypot(19 * 0.7, 7 * 0.9, 2 * 2.5) + 0.5
    assert lesion["craniocaudal_extent_mm"] == pytest.approx(7.5)
    row = np.zeros((40, 30, 10), dtype=bool)
    row[10:30, 12, 5] = True  # one row of 20 pixels along x: exactly 14 mm, one pixel thick
    lesion = tumour_report(row, affine)["lesions"][0]
    assert lesion["longest_axial_diameter_mm"] == pytest.approx(14.0)
    assert lesion["short_axis_diameter_mm"] == pytest.approx(0.9)
    assert lesion["craniocaudal_extent_mm"] == pytest.approx(2.5)


@pytest.mark.parametrize("name", list(GRIDS))
def test_one_voxel_lesion_measures_one_voxel(name: str) -> None:
    mask = np.zeros((9, 9, 9), dtype=bool)
    mask[4, 4, 4] = True
    lesion = tumour_report(mask, GRIDS[name])["lesions"][0]
    axial = 0 if name == "axial first" else 2
    in_plane = [s for a, s in enumerate(np.linalg.norm(GRIDS[name][:3, :3], axis=0)) if a != axial]
    assert lesion["longest_axial_diameter_mm"] == pytest.approx(max(in_plane))
    assert lesion["short_axis_diameter_mm"] == pytest.approx(min(in_plane))
    assert lesion["greatest_3d_diameter_mm"] == pytest.approx(2.5)
    assert lesion["craniocaudal_extent_mm"] == pytest.approx(2.5)
    assert lesion["flags"]["small"] is True


def test_caliper_endpoints_in_lps_and_slice_numbers_from_inferior() -> None:
    # pixels i = 10..19 on row j = 5 of slice k = 3; RAS grid of 0.5 x 0.5 x 2 mm with origin (-10, -20, -30)
    affine = np.array([[0.5, 0, 0, -10.0], [0, 0.5, 0, -20.0], [0, 0, 2.0, -30.0], [0, 0, 0, 1]])
    mask = np.zeros((30, 12, 8), dtype=bool)
    mask[10:20, 5, 3] = True
    expected = sorted([[5.25, 17.5, -24.0], [0.25, 17.5, -24.0]])  # x = -(-10 + 0.5 * 9.5), y = -(-20 + 2.5)
    lesion = tumour_report(mask, affine)["lesions"][0]
    np.testing.assert_allclose(sorted(lesion["longest_axial_diameter_endpoints_lps_mm"]), expected, atol=1e-6)
    assert lesion["longest_axial_diameter_slice_number"] == 4 and lesion["axial_slice_numbers"] == [4, 4]
    assert lesion["centroid_lps_mm"] == pytest.approx([-(-10 + 0.5 * 14.5), 17.5, -24.0])
    # the same anatomy stored L,P,I (every axis reversed): same LPS points, same slice number
    flipped = mask[::-1, ::-1, ::-1]
    flip = np.diag([-1.0, -1.0, -1.0, 1.0])
    flip[:3, 3] = np.array(mask.shape) - 1
    lesion = tumour_report(flipped, affine @ flip)["lesions"][0]
    np.testing.assert_allclose(sorted(lesion["longest_axial_diameter_endpoints_lps_mm"]), expected, atol=1e-6)
    assert lesion["longest_axial_diameter_slice"] == 4  # array index 8 - 1 - 3
    assert lesion["longest_axial_diameter_slice_number"] == 4 and lesion["axial_slice_numbers"] == [4, 4]


def test_slice_numbers_span_the_lesion() -> None:
    mask = np.zeros((10, 10, 12), dtype=bool)
    mask[4:6, 4:6, 2:7] = True  # array slices 2..6
    flip = np.diag([1.0, 1.0, -2.0, 1.0])  # index grows towards inferior: slice 1 is the last index
    lesion = lesion_measurements(mask, (0, 0, 0), flip, mask.shape)
    assert lesion["axial_slice_range"] == [2, 6]
    assert lesion["axial_slice_numbers"] == [12 - 6, 12 - 2]


# ---------------------------------------------------------------------------------------------- RECIST and T

CUT_OFFS = [(10, "T1a", "T1b"), (20, "T1b", "T1c"), (30, "T1c", "T2a"), (40, "T2a", "T2b"), (50, "T2b", "T3")]


@pytest.mark.parametrize(("cut", "below", "above"), [*CUT_OFFS, (70, "T3", "T4")])
def test_t_category_on_both_sides_of_each_cut_off(cut: float, below: str, above: str) -> None:
    assert t_category(cut - 0.1) == below
    assert t_category(cut) == below  # "<= 1 cm" is inclusive
    assert t_category(cut + 0.1) == above


def test_t_category_from_measured_rows_of_pixels() -> None:
    # rows of 0.5 mm pixels: 20 pixels are 10.0 mm edge to edge (T1a), 21 pixels 10.5 mm (T1b)
    affine = np.diag([0.5, 0.5, 1.0, 1.0])
    for pixels, category in ((20, "T1a"), (21, "T1b"), (60, "T1c"), (61, "T2a")):
        mask = np.zeros((70, 5, 3), dtype=bool)
        mask[2 : 2 + pixels, 2, 1] = True
        report = tumour_report(mask, affine)
        assert report["t_category"]["category"] == category, pixels
        assert report["t_category"]["label"] == "size criterion only"
        assert any("lymph nodes" in item for item in report["t_category"]["not_assessed"])


def test_measurability_at_10_mm_and_twice_the_slice_thickness() -> None:
    assert is_measurable(10.0, 1.0) and not is_measurable(9.9, 1.0)
    assert is_measurable(12.0, 6.0) and not is_measurable(11.9, 6.0)
    assert is_measurable(10.0, 5.0) and not is_measurable(9.99, 5.0)
    # through the report: 0.5 mm pixels on 6 mm slices; rows of 20 and 24 pixels are 10 and 12 mm
    affine = np.diag([0.5, 0.5, 6.0, 1.0])
    mask = np.zeros((40, 12, 3), dtype=bool)
    mask[2:22, 2, 1] = True
    mask[2:26, 8, 1] = True
    report = tumour_report(mask, affine)
    by_size = {round(lesion["longest_axial_diameter_mm"]): lesion for lesion in report["lesions"]}
    assert by_size[10]["recist_measurable"] is False and by_size[12]["recist_measurable"] is True
    assert report["recist"]["min_measurable_diameter_mm"] == 12.0
    thin = tumour_report(mask, affine, slice_thickness_mm=1.0)
    assert all(lesion["recist_measurable"] for lesion in thin["lesions"])


def test_target_selection_at_most_five_and_two_per_organ() -> None:
    diameters = [12.0, 45.0, 30.0, 11.0, 25.0, 60.0, 8.0]
    organs = ["liver", "lung", "lung", "node", "lung", "bone", "lung"]
    measurable = [d >= 10 for d in diameters]
    # largest first; the third lung lesion (25 mm) is skipped, the 8 mm one is not measurable
    assert select_targets(diameters, measurable, organs) == [5, 1, 2, 0, 3]
    six = [12.0, 45.0, 30.0, 11.0, 25.0, 60.0]
    assert select_targets(six, [True] * 6, ["a", "b", "c", "d", "e", "f"]) == [5, 1, 2, 4, 0]
    assert select_targets(six, [True] * 6, ["lung"] * 6) == [5, 1]


def test_report_targets_non_targets_and_sum_of_diameters() -> None:
    affine = np.diag([0.5, 0.5, 1.0, 1.0])
    mask = np.zeros((80, 20, 3), dtype=bool)
    for row, pixels in ((2, 30), (6, 50), (10, 40), (14, 10)):  # 15, 25, 20 and 5 mm
        mask[2 : 2 + pixels, row, 1] = True
    report = tumour_report(mask, affine)
    by_size = {round(lesion["longest_axial_diameter_mm"]): lesion["lesion"] for lesion in report["lesions"]}
    assert report["recist"]["target_lesions"] == [by_size[25], by_size[20]]  # lung: one organ, 2 targets
    assert sorted(report["recist"]["non_target_lesions"]) == sorted([by_size[15], by_size[5]])
    assert report["recist"]["sum_of_diameters_mm"] == pytest.approx(45.0)
    assert report["t_category"]["lesion"] == by_size[25] and report["t_category"]["category"] == "T1c"


# ---------------------------------------------------------------------------------------------- attenuation


def ball(shape: tuple[int, int, int], radius: float, centre: tuple[float, ...] | None = None) -> np.ndarray:
    centre = centre or tuple((n - 1) / 2 for n in shape)
    grid = np.indices(shape, dtype=float)
    return sum((grid[a] - centre[a]) ** 2 for a in range(3)) <= radius**2


def test_attenuation_of_solid_part_solid_ground_glass_cavitary_and_calcified_phantoms() -> None:
    affine = np.eye(4)  # 1 mm voxels
    shape = (25, 25, 25)
    outer, core = ball(shape, 8.5), ball(shape, 3.5)
    lung = np.full(shape, -850.0)

    solid = np.where(outer, 40.0, lung)
    found = lesion_attenuation(outer, solid, affine)
    assert found["kind"] == "solid" and not found["cavitary"] and not found["calcified"]
    assert found["hu_mean"] == pytest.approx(40.0) and found["hu_sd"] == pytest.approx(0.0)
    assert found["hu_percentiles"]["p50"] == pytest.approx(40.0)
    assert found["solid_volume_ml"] == pytest.approx(outer.sum() / 1000)

    part_solid = np.where(outer, -600.0, lung)
    part_solid[core] = 40.0
    found = lesion_attenuation(outer, part_solid, affine)
    assert found["kind"] == "part-solid"
    assert found["solid_volume_ml"] == pytest.approx(core.sum() / 1000)
    assert found["ground_glass_volume_ml"] == pytest.approx((outer & ~core).sum() / 1000)
    assert found["solid_longest_axial_diameter_mm"] == pytest.approx(7.0, abs=1.0)
    expected_mean = (40.0 * core.sum() - 600.0 * (outer & ~core).sum()) / outer.sum()
    assert found["hu_mean"] == pytest.approx(expected_mean)

    ground_glass = np.where(outer, -600.0, lung)
    assert lesion_attenuation(outer, ground_glass, affine)["kind"] == "ground-glass"
    assert lesion_attenuation(outer, lung, affine)["kind"] == "lung-like"  # a false positive on aerated lung

    cavitary = np.where(outer, 40.0, lung)
    cavitary[core] = -1000.0
    found = lesion_attenuation(outer & ~core, cavitary, affine)  # the segmentation leaves the air out
    assert found["cavitary"] and found["cavity_volume_ml"] == pytest.approx(core.sum() / 1000)
    assert found["kind"] == "solid" and not found["calcified"]

    calcified = np.where(outer, 40.0, lung)
    calcified[ball(shape, 2.5)] = 400.0
    found = lesion_attenuation(outer, calcified, affine)
    assert found["calcified"] and found["calcification_volume_ml"] == pytest.approx(ball(shape, 2.5).sum() / 1000)
    assert not found["cavitary"]


def test_part_solid_lesion_is_t_staged_by_its_solid_part() -> None:
    # a 30 mm part-solid nodule with a 13 mm solid core in the left lung of a phantom chest: T1b, not T1c
    shape = (128, 128, 40)
    x, y = np.mgrid[: shape[0], : shape[1]]
    image = np.where(((x - 64) / 55) ** 2 + ((y - 64) / 40) ** 2 < 1, 40.0, -1000.0)
    image[(((x - 40) / 22) ** 2 + ((y - 64) / 30) ** 2 < 1)] = -850.0
    image = np.repeat(image[..., None], shape[2], axis=2)
    outer = ball(shape, 14.5, (40, 64, 20))
    image[outer] = -600.0
    image[ball(shape, 6.5, (40, 64, 20))] = 40.0
    report = tumour_report(outer, np.eye(4), image)
    lesion = report["lesions"][0]
    assert lesion["attenuation"]["kind"] == "part-solid"
    assert lesion["longest_axial_diameter_mm"] == pytest.approx(30.0, abs=1.0)
    assert report["t_category"]["category"] == "T1b"
    assert report["t_category"]["size_mm"] == pytest.approx(13.0, abs=1.0)
    assert report["t_category"]["size_basis"].startswith("solid part")
    image[outer] = -600.0  # pure ground-glass: not sized
    report = tumour_report(outer, np.eye(4), image)
    assert report["t_category"]["category"] is None and "histology" in report["t_category"]["note"]


# ---------------------------------------------------------------------------------------------- confidence, flags


def test_probability_and_reliability_flags() -> None:
    affine = np.diag([0.8, 0.8, 1.0, 1.0])
    shape = (60, 40, 40)
    nodule = ball(shape, 6.5, (15, 20, 20))  # about 10 mm across
    vessel = np.zeros(shape, dtype=bool)
    vessel[40:43, 18:21, 5:35] = True  # a 2.4 x 2.4 x 30 mm tube
    speck = np.zeros(shape, dtype=bool)
    speck[50:52, 5:7, 5:7] = True
    probability = np.where(nodule, 0.9, 0.0).astype(np.float32)
    probability[20, 20, 20] = 0.99
    probability[vessel] = 0.6
    probability[speck] = 0.55
    report = tumour_report(nodule | vessel | speck, affine, probability=probability)
    by_x = {round(lesion["centroid_voxel"][0]): lesion for lesion in report["lesions"]}
    nod, ves, spk = by_x[15], by_x[41], by_x[50]
    assert nod["probability_max"] == pytest.approx(0.99)
    assert nod["probability_mean"] == pytest.approx((0.9 * (nodule.sum() - 1) + 0.99) / nodule.sum(), rel=1e-6)
    assert ves["probability_mean"] == pytest.approx(0.6) and spk["probability_max"] == pytest.approx(0.55)
    assert nod["flags"] == {"small": False, "vessel_like": False}
    assert ves["flags"]["vessel_like"] is True and ves["principal_axes_ratio"] > 5
    assert spk["flags"]["small"] is True
    assert tumour_report(nodule, affine)["lesions"][0]["probability_mean"] is None


# ---------------------------------------------------------------------------------------------- text and schema


def test_text_report_prints_lps_coordinates_and_the_disclaimer() -> None:
    mask = np.zeros((40, 30, 10), dtype=bool)
    mask[10:30, 10:18, 4:7] = True
    report = tumour_report(mask, GRIDS["LPS"])
    text = format_report(report)
    lesion = report["lesions"][0]
    assert DISCLAIMER in text
    assert "orientation LPS" not in text and "world RAS" not in text
    assert "LPS (" + ", ".join(f"{c:.1f}" for c in lesion["centroid_lps_mm"]) + ") mm" in text
    slice_number = lesion["longest_axial_diameter_slice_number"]
    assert f"{lesion['longest_axial_diameter_mm']:.1f} mm on slice {slice_number}" in text
    assert "size criterion only" in text and "not assessed" in text


def schema_fields() -> set[str]:
    return set(re.findall(r"^\| `([a-z0-9_]+)`", DOCS.read_text(), flags=re.MULTILINE))


def report_keys(value: object) -> set[str]:
    keys = set()
    if isinstance(value, dict):
        for key, item in value.items():
            keys.add(key)
            if key != "conventions":
                keys |= report_keys(item)
    elif isinstance(value, list):
        for item in value:
            keys |= report_keys(item)
    return keys


def test_every_report_field_is_documented_in_the_schema(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    source = save(chest((160, 140, 24)), ORIENTATIONS["LPS"], tmp_path / "lung_007.nii.gz")
    main_predict(run, source, tmp_path / "out")
    report = json.loads((tmp_path / "out" / "lung_007_report.json").read_text())
    assert report["schema_version"] == "2.6"
    undocumented = report_keys(report) - schema_fields()
    assert not undocumented
    assert set(report["conventions"]) <= schema_fields() | {"schema_version"}

    provenance = report["provenance"]
    assert provenance["input_sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert provenance["package_version"] == lung_tumor.__version__
    assert provenance["checkpoint"] == str((run / "checkpoints" / "best.pt").resolve())
    assert provenance["run_dir"] == str(run.resolve())
    assert provenance["threshold"] == 0.5
    assert provenance["post_processing"] == {
        "min_lesion_mm3": 0.0,
        "lung_mask": False,
        "flip_tta": False,
        "min_depth_ratio": 0.0,
        "min_slice_mm": 0.0,
        "second_look_mm": 0.0,
    }
    assert provenance["series_instance_uid"] is None
    stamped = datetime.datetime.fromisoformat(provenance["date_utc"])
    assert stamped.utcoffset() == datetime.timedelta(0)
    assert abs((datetime.datetime.now(datetime.UTC) - stamped).total_seconds()) < 3600
    lesion = report["lesions"][0]
    assert 0.5 < lesion["probability_mean"] <= lesion["probability_max"] <= 1.0
    assert lesion["attenuation"]["kind"] == "solid"
    text = (tmp_path / "out" / "lung_007_report.txt").read_text()
    assert provenance["input_sha256"] in text and DISCLAIMER in text


def test_dicom_folder_checksum_covers_names_and_contents_not_hidden_files(tmp_path: Path) -> None:
    from lung_tumor.provenance import input_sha256

    folder = tmp_path / "series"
    folder.mkdir()
    (folder / "1.dcm").write_bytes(b"first")
    (folder / "2.dcm").write_bytes(b"second")
    expected = hashlib.sha256(b"1.dcm\0first2.dcm\0second").hexdigest()
    assert input_sha256(folder) == expected
    (folder / ".partial").write_bytes(b"ignored")
    assert input_sha256(folder) == expected
    (folder / "2.dcm").write_bytes(b"changed")
    assert input_sha256(folder) != expected


def test_real_lidc_nodule_measurements(real_ct_dir: Path) -> None:
    import nibabel as nib

    image = nib.load(real_ct_dir / "lidc-idri-0001" / "ct.nii.gz")
    mask = np.asarray(nib.load(real_ct_dir / "lidc-idri-0001" / "nodule_mask_2readers.nii.gz").dataobj)
    report = tumour_report(mask, image.affine, np.asarray(image.dataobj, dtype=np.float32))
    lesion = report["lesions"][0]
    # a solid nodule of about 25 mm equivalent diameter in the patient's left lung (LPS x > 0) of a 16-slice slab
    assert lesion["attenuation"]["kind"] == "solid"
    assert lesion["equivalent_diameter_mm"] < lesion["longest_axial_diameter_mm"] <= lesion["greatest_3d_diameter_mm"]
    assert lesion["short_axis_diameter_mm"] <= lesion["longest_axial_diameter_mm"]
    assert all(point[0] > 0 for point in lesion["longest_axial_diameter_endpoints_lps_mm"])
    assert 1 <= lesion["axial_slice_numbers"][0] <= lesion["axial_slice_numbers"][1] <= 16
    first, last = lesion["axial_slice_range"]
    assert lesion["craniocaudal_extent_mm"] == pytest.approx((last - first + 1) * 2.5)
    assert report["recist"]["target_lesions"] == [1] and lesion["recist_measurable"]
    assert report["t_category"]["category"] == t_category(lesion["longest_axial_diameter_mm"])
    assert not lesion["flags"]["small"] and not lesion["flags"]["vessel_like"]


def test_dicom_provenance_reads_the_series_instance_uid(real_ct_dir: Path, tmp_path: Path) -> None:
    from lung_tumor.provenance import dicom_series_uid, input_sha256, prediction_provenance

    folder = real_ct_dir / "lidc-idri-0001" / "dicom"
    provenance = prediction_provenance(folder, tmp_path, tmp_path / "best.pt", 0.5, 0.0, False)
    assert provenance["series_instance_uid"] == "1.3.6.1.4.1.14519.5.2.1.6279.6001.179049373636438705059720603192"
    assert provenance["input_sha256"] == input_sha256(folder)
    (tmp_path / "notes.txt").write_text("not DICOM")
    assert dicom_series_uid(tmp_path) is None

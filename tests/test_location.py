"""Lung, zone, depth, contacts and airway of each lesion on a chest phantom of known geometry and real CT."""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from chest_phantom import (
    AFFINE,
    CARINA,
    SHAPE,
    SPACING,
    add_box,
    add_sphere,
    chest,
    to_lps,
    voxel_index,
    world_grid,
)

from lung_tumor.data.synth import synthesize_case
from lung_tumor.location import lesion_relations, lung_anatomy
from lung_tumor.report import body_midline_x, format_report, tumour_report
from lung_tumor.thorax import thorax_masks

# one lesion in each lung and each third of it (the lungs span z -40..50 mm: thirds at 20 and -10 mm)
ZONE_LESIONS = {
    (side, zone): (45.0 * sign, 0.0, z)
    for side, sign in (("right", 1), ("left", -1))
    for zone, z in (("upper", 35.0), ("middle", 5.0), ("lower", -25.0))
}


def by_centre(report: dict) -> dict[tuple[int, int, int], dict]:
    """The report's lesions keyed by their centroid rounded to 5 mm (world RAS)."""
    return {tuple(int(round(c / 5)) for c in lesion["centroid_world_mm"]): lesion for lesion in report["lesions"]}


def assert_close(a: object, b: object, tolerance: float = 1e-6) -> None:
    """Equal, nested; floats within ``tolerance``. The tissue regions (mediastinum, chest wall, diaphragm) lie on
    the coarse grid (3 x 2 x 1 voxels here), which samples other voxels when the axes are reversed: depth
    fractions agree within 0.1 (one coarse voxel in 30 mm) and gaps beyond the 2 mm threshold, to a region's
    edge, within a coarse voxel's diagonal (4.3 mm); gaps within the threshold agree exactly."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for key in a:
            if key == "gap_mm" and a[key] is not None and b[key] is not None and max(a[key], b[key]) > 2.0:
                assert a[key] == pytest.approx(b[key], abs=4.3)
            else:
                assert_close(a[key], b[key], 0.1 if key == "depth_fraction" else tolerance)
    elif isinstance(a, float):
        assert a == pytest.approx(b, abs=tolerance)
    else:
        assert a == b


def lesion_at(report: dict, point: tuple[float, float, float], tolerance: float = 3.0) -> dict:
    found = [
        lesion
        for lesion in report["lesions"]
        if np.linalg.norm(np.subtract(lesion["centroid_world_mm"], point)) <= tolerance
    ]
    assert len(found) == 1, point
    return found[0]


@pytest.fixture(scope="module")
def zone_case() -> tuple[np.ndarray, np.ndarray]:
    hu, mask = chest(), np.zeros(SHAPE, dtype=bool)
    for centre in ZONE_LESIONS.values():
        add_sphere(hu, mask, centre, 5.0)
    add_sphere(hu, mask, (25.0, -25.0, 38.0), 3.0)  # a second lesion in the right upper zone
    return hu, mask


@pytest.fixture(scope="module")
def zone_report(zone_case: tuple[np.ndarray, np.ndarray]) -> dict:
    hu, mask = zone_case
    return tumour_report(mask, AFFINE, hu)


def test_lung_and_zone_of_a_lesion_in_each_lung_and_zone(zone_report: dict) -> None:
    assert zone_report["lungs"]["split_method"] == "separate components"
    for (side, zone), centre in ZONE_LESIONS.items():
        location = lesion_at(zone_report, centre)["location"]
        assert (location["lung"], location["zone"]) == (side, zone)
        assert location["depth"] == "middle"  # halfway between the mediastinum (|x| 19) and the wall (|x| 71)
        assert location["depth_fraction"] == pytest.approx(0.5, abs=0.05)
        assert location["lobe"].startswith("not assessed")
    for side in ("right", "left"):
        lung = zone_report["lungs"][side]
        assert lung["superior_z_mm"] == pytest.approx(50.0) and lung["inferior_z_mm"] == pytest.approx(-40.0)


def test_relations_between_lesions(zone_report: dict) -> None:
    number = {key: lesion_at(zone_report, centre)["lesion"] for key, centre in ZONE_LESIONS.items()}
    second = lesion_at(zone_report, (25.0, -25.0, 38.0))["lesion"]
    relation = {tuple(sorted(pair["lesions"])): pair["relation"] for pair in zone_report["lesion_relations"]["pairs"]}
    assert len(relation) == 7 * 6 // 2
    assert (
        relation[tuple(sorted((number["right", "upper"], second)))] == "same lung, same zone (right lung, upper zone)"
    )
    assert relation[tuple(sorted((number["right", "upper"], number["right", "lower"])))] == (
        "same lung, other zone (right lung)"
    )
    assert relation[tuple(sorted((number["right", "upper"], number["left", "upper"])))] == "other lung"
    assert zone_report["lesion_relations"]["summary"].endswith("(both lungs)")
    assert "4 in the right lung" in zone_report["lesion_relations"]["summary"]
    assert "3 in the left lung" in zone_report["lesion_relations"]["summary"]


def test_same_answers_in_lps_and_ras(zone_case: tuple[np.ndarray, np.ndarray], zone_report: dict) -> None:
    hu, mask = zone_case
    hu_lps, affine_lps = to_lps(hu, AFFINE)
    mask_lps, _ = to_lps(mask, AFFINE)
    lps = tumour_report(mask_lps, affine_lps, hu_lps)
    assert lps["orientation"] == "LPS" and zone_report["orientation"] == "RAS"
    ras_lesions, lps_lesions = by_centre(zone_report), by_centre(lps)
    assert ras_lesions.keys() == lps_lesions.keys()
    for key, ras in ras_lesions.items():
        for section in ("location", "contacts", "airway"):
            assert_close(lps_lesions[key][section], ras[section])
    assert lps["lungs"]["carina_world_mm"] == pytest.approx(zone_report["lungs"]["carina_world_mm"])


def test_lungs_meeting_at_a_junction_are_split_left_and_right() -> None:
    hu, mask = chest(junction=True), np.zeros(SHAPE, dtype=bool)
    for key in (("right", "upper"), ("left", "lower")):
        add_sphere(hu, mask, ZONE_LESIONS[key], 5.0)
    report = tumour_report(mask, AFFINE, hu)
    assert "split" in report["lungs"]["split_method"]
    for side, zone in (("right", "upper"), ("left", "lower")):
        location = lesion_at(report, ZONE_LESIONS[side, zone])["location"]
        assert (location["lung"], location["zone"]) == (side, zone)


# box lesions at known gaps; the phantom's x voxels are 1 mm, its z voxels 2.5 mm
WALL_1MM = ((166, 50, 24), (174, 58, 28))  # right lung, lateral wall from x index 176: 1 voxel (1 mm) of lung
WALL_5MM = ((162, 50, 16), (170, 58, 20))  # 5 voxels (5 mm) of lung
ON_DIAPHRAGM = ((61, 50, 8), (69, 58, 11))  # left lung, base slice k 8 (z -40 mm), diaphragm below
ABOVE_DIAPHRAGM = ((141, 50, 10), (149, 58, 13))  # right lung, 2 slices (5 mm) above the diaphragm
ON_MEDIASTINUM = ((77, 30, 32), (85, 36, 36))  # left lung up to x index 85, mediastinum from 86
IN_MEDIASTINUM = ((100, 27, 16), (110, 31, 20))


# the mediastinum's tissue reaches x = 19 mm, the chest wall's x = 71 mm and |y| = 46.5 mm (y voxels 1.5 mm)
CENTRAL = (28.0, 0.0, -30.0)  # 9 mm from the mediastinum, 46.5 mm from the front and back walls
PERIPHERAL = (62.0, 0.0, -30.0)  # 43 mm from the mediastinum, 9 mm from the lateral wall


def box_centre(box: tuple[tuple[int, int, int], tuple[int, int, int]]) -> tuple[float, ...]:
    index = (np.array(box[0]) + np.array(box[1])) / 2
    return tuple(AFFINE[:3, :3] @ index + AFFINE[:3, 3])


@pytest.fixture(scope="module")
def contact_report() -> dict:
    hu, mask = chest(), np.zeros(SHAPE, dtype=bool)
    for box in (WALL_1MM, WALL_5MM, ON_DIAPHRAGM, ABOVE_DIAPHRAGM, ON_MEDIASTINUM, IN_MEDIASTINUM):
        add_box(hu, mask, *box)
    add_sphere(hu, mask, CENTRAL, 3.0)
    add_sphere(hu, mask, PERIPHERAL, 3.0)
    return tumour_report(mask, AFFINE, hu)


def findings(report: dict, box: tuple) -> dict[str, bool]:
    contacts = lesion_at(report, box_centre(box))["contacts"]
    return {name: contacts[name]["contact"] for name in ("chest_wall", "diaphragm", "mediastinum")}


def test_chest_wall_contact_at_1_mm_and_not_at_5_mm(contact_report: dict) -> None:
    assert findings(contact_report, WALL_1MM) == {"chest_wall": True, "diaphragm": False, "mediastinum": False}
    wall = lesion_at(contact_report, box_centre(WALL_1MM))["contacts"]["chest_wall"]
    assert wall["gap_mm"] == pytest.approx(1.0)
    # the lesion's lateral face, 9 x 1.5 mm by 5 x 2.5 mm, measured corner to corner
    assert wall["contact_length_mm"] == pytest.approx(math.hypot(9 * 1.5, 5 * 2.5), abs=SPACING[2])
    assert lesion_at(contact_report, box_centre(WALL_1MM))["contacts"]["threshold_mm"] == 2.0
    assert findings(contact_report, WALL_5MM) == {"chest_wall": False, "diaphragm": False, "mediastinum": False}
    far = lesion_at(contact_report, box_centre(WALL_5MM))["contacts"]["chest_wall"]
    assert far["gap_mm"] == pytest.approx(5.0)
    assert far["contact_length_mm"] == 0.0


def test_diaphragm_contact_in_millimetres_not_voxels(contact_report: dict) -> None:
    assert findings(contact_report, ON_DIAPHRAGM) == {"chest_wall": False, "diaphragm": True, "mediastinum": False}
    on = lesion_at(contact_report, box_centre(ON_DIAPHRAGM))
    assert on["location"]["lung"] == "left"
    assert on["contacts"]["diaphragm"]["contact_length_mm"] == pytest.approx(math.hypot(9 * 1.0, 9 * 1.5), abs=1.5)
    # 5 mm above it: two 2.5 mm slices, within a threshold of "2 voxels" but not of 2 mm
    above = lesion_at(contact_report, box_centre(ABOVE_DIAPHRAGM))
    assert above["location"]["lung"] == "right"
    assert above["contacts"]["diaphragm"]["gap_mm"] == pytest.approx(5.0)
    assert findings(contact_report, ABOVE_DIAPHRAGM) == {"chest_wall": False, "diaphragm": False, "mediastinum": False}


def test_mediastinal_contact_and_a_mediastinal_lesion(contact_report: dict) -> None:
    assert findings(contact_report, ON_MEDIASTINUM) == {"chest_wall": False, "diaphragm": False, "mediastinum": True}
    assert lesion_at(contact_report, box_centre(ON_MEDIASTINUM))["location"]["lung"] == "left"
    inside = lesion_at(contact_report, box_centre(IN_MEDIASTINUM))
    assert inside["location"]["lung"] == "outside both lungs (mediastinum)"
    assert inside["location"]["zone"].startswith("not assessed")
    assert inside["contacts"]["mediastinum"]["contact"] is True


def test_depth_central_and_peripheral(contact_report: dict) -> None:
    central = lesion_at(contact_report, CENTRAL)["location"]
    peripheral = lesion_at(contact_report, PERIPHERAL)["location"]
    assert (central["lung"], central["depth"]) == ("right", "central")
    assert central["depth_fraction"] == pytest.approx(9 / (9 + 46.5), abs=0.06)
    assert (peripheral["lung"], peripheral["depth"]) == ("right", "peripheral")
    assert peripheral["depth_fraction"] == pytest.approx(43 / (43 + 9), abs=0.06)


def test_carina_and_main_bronchi(zone_report: dict) -> None:
    lungs = zone_report["lungs"]
    assert lungs["carina_world_mm"] == pytest.approx(CARINA, abs=max(SPACING))
    assert abs(lungs["carina_world_mm"][2] - CARINA[2]) <= SPACING[2]
    assert lungs["main_bronchi_found"] == ["left", "right"]
    x, y, z = world_grid()
    for key, centre in ZONE_LESIONS.items():
        lesion = lesion_at(zone_report, centre)
        ball = (x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2 <= 25.0
        truth = np.sqrt((x[ball] - CARINA[0]) ** 2 + (y[ball] - CARINA[1]) ** 2 + (z[ball] - CARINA[2]) ** 2).min()
        assert lesion["airway"]["distance_to_carina_mm"] == pytest.approx(truth, abs=SPACING[2]), key
        assert lesion["airway"]["nearest_main_bronchus"] == key[0]


def test_no_carina_in_a_slab_below_it() -> None:
    hu, mask = chest(), np.zeros(SHAPE, dtype=bool)
    add_sphere(hu, mask, ZONE_LESIONS["left", "lower"], 5.0)
    top = voxel_index(0.0, 0.0, 0.0)[2]  # the slab stops at z = 0, below the carina (z 12.9 mm)
    affine = AFFINE.copy()
    report = tumour_report(mask[..., :top], affine, hu[..., :top])
    assert report["lungs"]["carina_world_mm"] is None
    assert report["lungs"]["airway"].startswith("not found")
    lesion = report["lesions"][0]
    assert lesion["airway"]["distance_to_carina_mm"] is None
    assert lesion["location"]["lung"] == "left"
    assert lesion["location"]["zone"].startswith("not assessed")  # the slab cuts the lungs


def test_relations_without_lungs() -> None:
    lesions = [
        {"lesion": 1, "location": {"lung": "unknown: no CT given", "zone": "unknown: no CT given"}},
        {"lesion": 2, "location": {"lung": "unknown: no CT given", "zone": "unknown: no CT given"}},
    ]
    assert lesion_relations(lesions)["pairs"] == [{"lesions": [1, 2], "relation": "not both in a lung"}]


def test_real_lidc_nodule_lies_in_the_left_lung(real_ct_dir: Path) -> None:
    # The slab is stored L,P,S: voxel x index grows towards the patient's left (affine[0, 0] < 0 in RAS);
    # the nodule sits at x index ~316 of 512, RAS x = -56 mm, 52 mm to the left of the body's midline.
    folder = real_ct_dir / "lidc-idri-0001"
    ct = nib.load(folder / "ct.nii.gz")
    nodule = np.asarray(nib.load(folder / "nodule_mask_2readers.nii.gz").dataobj)
    report = tumour_report(nodule, ct.affine, np.asarray(ct.dataobj))
    assert report["lesion_count"] == 1 and "split" in report["lungs"]["split_method"]
    lesion = report["lesions"][0]
    assert lesion["location"]["lung"] == "left"
    assert lesion["location"]["lung_voxels_around"]["right"] == 0
    assert lesion["location"]["zone"].startswith("not assessed")  # a 16-slice slab holds no whole lung
    assert lesion["contacts"]["diaphragm"]["contact"] is None  # the slab ends above the lung bases
    assert report["lungs"]["carina_world_mm"] is None  # the slab starts below the carina
    text = format_report(report)
    assert "  lung: left; zone: not assessed" in text
    assert "contact (within 2 mm): chest wall: yes, contact length" in text


@pytest.mark.parametrize(("case", "lung", "zone"), [(2, "left", "upper"), (3, "right", "middle")])
def test_synthetic_scans_lung_and_zone(case: int, lung: str, zone: str) -> None:
    # synth's anatomy: the lesion's lung from its painted centre (RAS x > 0: right), its zone from the lungs'
    # extent in the scan (lung_002: lungs z 80..-186 mm, lesion z 0; lung_003: 55..-191, lesion -18)
    scan = synthesize_case(case, seed=0, size="small")
    report = tumour_report(scan.label, scan.affine, scan.image.astype(np.float32))
    truth = scan.tumours[0]["centre_mm"]
    assert ("right" if truth[0] > report["midline_x_mm"] else "left") == lung
    lesion = lesion_at(report, tuple(truth))
    assert (lesion["location"]["lung"], lesion["location"]["zone"]) == (lung, zone)
    assert report["lungs"]["right"]["apex_in_scan"] and report["lungs"]["left"]["base_in_scan"]


def test_real_thorax_crop_carina(real_ct_dir: Path) -> None:
    # The carina of this crop, read by eye on its axial slices: the ridge between the main bronchi forms at
    # voxel (43, 74) on slices 94-95 (the trachea is one oval lumen on slice 100, two lumens on slice 92).
    ct = nib.load(real_ct_dir / "thorax-no-tumour" / "ct.nii.gz")
    image = np.asarray(ct.dataobj)
    midline_x, _ = body_midline_x(ct.affine, image.shape, image)
    anatomy = lung_anatomy(image, ct.affine, thorax_masks(image, ct.affine), midline_x)
    truth = ct.affine[:3, :3] @ np.array([43.0, 74.0, 94.5]) + ct.affine[:3, 3]
    assert anatomy.carina_world is not None
    assert np.linalg.norm(anatomy.carina_world - truth) <= 3 * 1.5
    assert set(anatomy.bronchi_world) == {"right", "left", "trachea"}
    # the right main bronchus runs to the patient's right (RAS +x) of the carina, the left one to the left
    assert anatomy.bronchi_world["right"][:, 0].mean() > anatomy.carina_world[0]
    assert anatomy.bronchi_world["left"][:, 0].mean() < anatomy.carina_world[0]

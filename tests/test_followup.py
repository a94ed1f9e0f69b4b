"""``lung-tumor followup``: alignment, lesion matching, RECIST response and doubling time on phantom pairs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lung_tumor.cli import main
from lung_tumor.followup import compare_reports, followup, overall_response, target_response, volume_doubling_time
from lung_tumor.io import save_nifti, write_json
from lung_tumor.outputs import marker
from lung_tumor.report import tumour_report

SHAPE = (80, 64, 24)
SPACING = (2.5, 2.5, 5.0)
# baseline: a 4x4x2-voxel tumour (10 x 10 x 10 mm) in one lung, a 4x4x3-voxel one in the other
TUMOUR_A = (slice(20, 24), slice(28, 32), slice(10, 12))
TUMOUR_B = (slice(54, 58), slice(30, 34), slice(8, 11))
NEW = (slice(22, 27), slice(38, 43), slice(15, 18))


def chest() -> np.ndarray:
    """Air, an asymmetric body (fat ellipse, spine, heart off-centre) with two lungs; array order x (R->L), y, z."""
    x, y, _ = np.meshgrid(*(np.linspace(-1, 1, n) for n in SHAPE), indexing="ij")
    image = np.full(SHAPE, -1000.0)
    image[(x / 0.9) ** 2 + (y / 0.75) ** 2 < 1] = -100.0
    image[((np.abs(x) - 0.42) / 0.32) ** 2 + (y / 0.55) ** 2 < 1] = -850.0
    image[(x / 0.12) ** 2 + ((y - 0.6) / 0.1) ** 2 < 1] = 500.0  # spine, posterior
    image[((x - 0.15) / 0.22) ** 2 + ((y + 0.2) / 0.25) ** 2 < 1] = 40.0  # heart, towards the left
    return image


def affine_of(rotation_deg: float = 0.0, shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    """RAS affine of the grid (x to the right... as L,P,S voxels), moved by a rigid motion about the centre."""
    base = np.diag([-SPACING[0], -SPACING[1], SPACING[2], 1.0])
    base[:3, 3] = [100.0, 80.0, -60.0]
    centre = base[:3, :3] @ ((np.array(SHAPE) - 1) / 2.0) + base[:3, 3]
    angle = np.deg2rad(rotation_deg)
    motion = np.eye(4)
    motion[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    motion[:3, 3] = centre - motion[:3, :3] @ centre + np.array(shift_mm)
    return motion @ base


def write_scan(folder: Path, case: str, tumours: list[tuple[slice, ...]], affine: np.ndarray) -> tuple[Path, Path]:
    """The CT and a prediction (mask, report) as ``lung-tumor predict`` writes them."""
    image = chest()
    mask = np.zeros(SHAPE, dtype=np.uint8)
    for box in tumours:
        image[box] = 30.0
        mask[box] = 1
    folder.mkdir(parents=True, exist_ok=True)
    ct = save_nifti(image.astype(np.int16), affine, folder / f"{case}_ct.nii.gz")
    masks = folder / "pred"
    masks.mkdir(exist_ok=True)
    mask_path = save_nifti(mask, affine, masks / f"{case}.nii.gz", description=marker("predict", "mask"))
    report = tumour_report(mask, affine, image_hu=image)
    report = {"generator": marker("predict"), **report}
    write_json(masks / f"{case}_report.json", report)
    return ct, mask_path


def grown(box: tuple[slice, ...], xy: int = 0, z: int = 0) -> tuple[slice, ...]:
    """``box`` grown by ``xy`` voxels on each side in plane and ``z`` on each side along z (centre kept)."""
    return (
        slice(box[0].start - xy, box[0].stop + xy),
        slice(box[1].start - xy, box[1].stop + xy),
        slice(box[2].start - z, box[2].stop + z),
    )


MOVED = affine_of(rotation_deg=5.0, shift_mm=(8.0, -5.0, 4.0))


def run_pair(tmp_path: Path, followup_tumours: list[tuple[slice, ...]], images: bool = True) -> dict:
    ct_a, mask_a = write_scan(tmp_path / "a", "base", [TUMOUR_A, TUMOUR_B], affine_of())
    ct_b, mask_b = write_scan(tmp_path / "b", "next", followup_tumours, MOVED)
    return followup(
        mask_a,
        mask_b.parent,
        tmp_path / "out",
        baseline_image=ct_a if images else None,
        followup_image=ct_b if images else None,
        baseline_date="2025-01-10",
        followup_date="2025-04-10",
    )


def test_growth_and_new_lesion_shifted_and_rotated(tmp_path: Path) -> None:
    # tumour A doubles its volume (z extent 2 -> 4 slices) in 90 days; a new lesion appears
    result = run_pair(tmp_path, [grown(TUMOUR_A, z=1), TUMOUR_B, NEW])
    alignment = result["alignment"]
    assert alignment["aligned"]
    assert alignment["rotation_deg"] == pytest.approx(5.0, abs=1.0)
    truth = MOVED @ np.linalg.inv(affine_of())
    assert np.array(alignment["offset_mm"]) == pytest.approx(truth[:3, 3], abs=3.0)
    # numbered by decreasing volume: baseline B (48 voxels) 1, A (32) 2; follow-up new (75) 1, A (64) 2, B 3
    assert {(p["baseline_lesion"], p["followup_lesion"]) for p in result["matches"]} == {(1, 3), (2, 2)}
    # lesion numbers by decreasing volume: baseline A and B equal (1, 2 in scan order); follow-up A (doubled) is 1
    big = next(p for p in result["matches"] if p["followup_volume_ml"] > 1.5 * p["baseline_volume_ml"])
    assert big["volume_change_percent"] == pytest.approx(100.0)
    assert big["volume_doubling_time_days"] == pytest.approx(90.0, rel=0.05)
    other = next(p for p in result["matches"] if p is not big)
    assert other["volume_change_percent"] == pytest.approx(0.0)
    for pair in result["matches"]:
        assert pair["distance_after_alignment_mm"] < 3.0
    assert result["new_lesions"] == [1] and result["vanished_lesions"] == []
    assert result["recist"]["overall_response"] == "PD"
    assert "new lesion" in result["recist"]["reason"]
    assert result["interval_days"] == 90.0
    text = (tmp_path / "out" / "followup.txt").read_text()
    assert "PD" in text and "90 days" in text
    assert json.loads((tmp_path / "out" / "followup.json").read_text())["generator"] == "lung-tumor followup"


@pytest.mark.parametrize(
    ("tumours", "expected"),
    [
        ([grown(TUMOUR_A, xy=2), grown(TUMOUR_B, xy=2)], "PD"),  # 10 x 10 -> 20 x 20 mm each
        ([TUMOUR_A, TUMOUR_B], "SD"),
        ([(slice(20, 22), slice(28, 30), slice(10, 13)), TUMOUR_B], "SD"),  # one target halves: -25 %
        ([(slice(20, 21), slice(28, 29), slice(10, 12)), (slice(54, 55), slice(30, 31), slice(8, 10))], "PR"),
        ([], "CR"),
    ],
)
def test_response_from_diameters_after_alignment(tmp_path: Path, tumours: list, expected: str) -> None:
    result = run_pair(tmp_path, tumours)
    assert result["recist"]["overall_response"] == expected
    assert result["new_lesions"] == []


def test_without_images_not_aligned(tmp_path: Path) -> None:
    result = run_pair(tmp_path, [TUMOUR_A, TUMOUR_B], images=False)
    assert not result["alignment"]["aligned"]
    assert "not aligned" in (tmp_path / "out" / "followup.txt").read_text()


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        (30.0, 36.0, "PD"),  # +20 %, +6 mm
        (30.0, 35.9, "SD"),  # +19.7 %
        (20.0, 24.0, "SD"),  # +20 % but only +4 mm: the 5 mm rule
        (20.0, 25.0, "PD"),  # +25 %, +5 mm
        (50.0, 35.0, "PR"),  # -30 %
        (50.0, 35.1, "SD"),  # -29.8 %
        (50.0, 0.0, "CR"),
    ],
)
def test_target_response_cut_offs(before: float, after: float, expected: str) -> None:
    assert target_response(before, after) == expected


def test_overall_response() -> None:
    assert overall_response("SD", new_lesion=True, lesions_left=True) == "PD"
    assert overall_response("CR", new_lesion=False, lesions_left=True) == "PR"
    assert overall_response("CR", new_lesion=False, lesions_left=False) == "CR"
    assert overall_response(None, new_lesion=False, lesions_left=True) == "NE"


def lesion(number: int, centre: list[float], diameter: float, volume: float, small: bool = False) -> dict:
    return {
        "lesion": number,
        "centroid_world_mm": centre,
        "longest_axial_diameter_mm": diameter,
        "volume_ml": volume,
        "flags": {"small": small},
    }


def test_small_new_lesion_is_listed_but_not_progression() -> None:
    baseline = {"lesions": [lesion(1, [0.0, 0.0, 0.0], 20.0, 2.0)], "recist": {"target_lesions": [1]}}
    followup_report = {
        "lesions": [lesion(1, [3.0, 0.0, 0.0], 20.0, 2.0), lesion(2, [60.0, 0.0, 0.0], 3.0, 0.01, small=True)],
        "recist": {"target_lesions": [1]},
    }
    identity = (np.eye(3), np.zeros(3))
    result = compare_reports(baseline, followup_report, identity, days=None)
    assert result["new_lesions"] == [2] and result["new_lesions_unequivocal"] == []
    assert result["recist"]["overall_response"] == "SD"
    followup_report["lesions"][1]["flags"]["small"] = False
    assert compare_reports(baseline, followup_report, identity, days=None)["recist"]["overall_response"] == "PD"
    # beyond the match distance (15 mm, or half the larger diameter) the baseline lesion vanished: CR of targets,
    # but a lesion remains
    far = {"lesions": [lesion(1, [16.0, 0.0, 0.0], 20.0, 2.0, small=True)], "recist": {"target_lesions": [1]}}
    result = compare_reports(baseline, far, identity, days=None)
    assert result["vanished_lesions"] == [1] and result["recist"]["target_response"] == "CR"
    assert result["recist"]["overall_response"] == "PR"


def test_volume_doubling_time() -> None:
    assert volume_doubling_time(1.0, 2.0, 90.0) == pytest.approx(90.0)
    assert volume_doubling_time(1.0, 8.0, 90.0) == pytest.approx(30.0)
    assert volume_doubling_time(2.0, 1.0, 90.0) == pytest.approx(-90.0)
    assert volume_doubling_time(1.0, 1.0, 90.0) is None


def test_bad_inputs_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, mask_a = write_scan(tmp_path / "a", "base", [TUMOUR_A], affine_of())
    _, mask_b = write_scan(tmp_path / "b", "next", [TUMOUR_A], affine_of())
    (mask_b.parent / "next_report.json").unlink()
    out = tmp_path / "out"
    assert main(["followup", "--baseline", str(mask_a), "--followup", str(mask_b), "--output", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "next_report.json" in err and "lung-tumor: error:" in err
    assert not out.exists()
    args = ["followup", "--baseline", str(mask_a), "--followup", str(mask_a), "--output", str(out)]
    assert main([*args, "--baseline-date", "2025-13-01", "--followup-date", "2025-01-01"]) == 1
    assert "not a date" in capsys.readouterr().err
    assert main([*args, "--baseline-image", str(mask_a)]) == 1
    assert "give both --baseline-image and --followup-image" in capsys.readouterr().err
    (mask_a.parent / "other_report.json").write_text("{}")
    assert main(["followup", "--baseline", str(mask_a.parent), "--followup", str(mask_a), "--output", str(out)]) == 1
    assert "2 prediction reports" in capsys.readouterr().err
    # an output may never replace an input
    assert main(["followup", "--baseline", str(mask_a), "--followup", str(mask_a), "--output", str(mask_a)]) == 1
    assert "folder is needed" in capsys.readouterr().err
    # a foreign followup.json is kept
    out.mkdir()
    (out / "followup.json").write_text("{}")
    assert main(["followup", "--baseline", str(mask_a), "--followup", str(mask_a), "--output", str(out)]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "followup.json").read_text() == "{}"


def test_cli_writes_outputs(tmp_path: Path) -> None:
    ct_a, mask_a = write_scan(tmp_path / "a", "base", [TUMOUR_A], affine_of())
    _, mask_b = write_scan(tmp_path / "b", "next", [grown(TUMOUR_A, z=1)], affine_of())
    out = tmp_path / "out"
    args = ["followup", "--baseline", str(mask_a), "--followup", str(mask_b), "--output", str(out)]
    assert main(args) == 0
    content = json.loads((out / "followup.json").read_text())
    assert content["interval_days"] is None
    assert content["matches"][0]["volume_doubling_time_note"] == "dates unknown"
    assert main(args) == 0  # its own earlier output is replaced without --overwrite

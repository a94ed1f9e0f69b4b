"""The one-page HTML report: calipers drawn where the report puts them, and a page a real browser shows."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from chest_phantom import AFFINE, SHAPE, add_box, add_sphere, chest, to_lps, voxel_index
from matplotlib.lines import Line2D
from PIL import Image

from lung_tumor.report import tumour_report
from lung_tumor.report_html import (
    LONG_AXIS_COLOUR,
    display_pixels,
    lesion_figure,
    pictured_lesions,
    report_html,
    write_report_html,
)
from lung_tumor.visualize import _DisplayVolume

BOX_LOW, BOX_HIGH = voxel_index(-60, -10, -10), voxel_index(-45, 5, 0)  # in the patient's left lung


def box_with_corner(shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    """A box lesion with one extra column of voxels diagonally off its (low x, low y) corner: one longest diagonal."""
    mask = np.zeros(shape, dtype=bool)
    add_box(np.zeros(shape, dtype=np.float32), mask, BOX_LOW, BOX_HIGH)
    mask[BOX_LOW[0] - 1, BOX_LOW[1] - 1, BOX_LOW[2] : BOX_HIGH[2] + 1] = True
    return mask


@pytest.mark.parametrize("storage", ["RAS", "LPS"])
def test_caliper_endpoints_land_on_the_lesion_corners_in_display_pixels(storage: str) -> None:
    mask, affine = box_with_corner(), AFFINE
    if storage == "LPS":
        mask, affine = to_lps(mask, affine)
    lesion = tumour_report(mask, affine)["lesions"][0]
    volume = _DisplayVolume(np.zeros(mask.shape, dtype=np.float32), affine, {"lesion": mask})
    ends = display_pixels(volume, lesion["longest_axial_diameter_endpoints_lps_mm"])

    # the corners in the displayed array, found from the displayed mask (independent of the affine algebra)
    shown = volume.masks["lesion"]
    rows, columns, slices = np.nonzero(shown)
    plane = shown.any(axis=2)
    lone = [tuple(p) for p in np.argwhere(plane) if _neighbours(plane, *p) == 1]
    assert len(lone) == 1  # the extra column, alone at one corner
    opposite = (
        rows.max() if lone[0][0] == rows.min() else rows.min(),
        columns.max() if lone[0][1] == columns.min() else columns.min(),
    )
    # each end sits on the circle of half a pixel (the ellipse inscribed in the voxel) around its corner's centre
    corners = np.array([lone[0], opposite], dtype=float)
    found = ends[:, :2] if np.linalg.norm(ends[0, :2] - corners[0]) < 1 else ends[::-1, :2]
    np.testing.assert_allclose(np.linalg.norm(found - corners, axis=1), 0.5, atol=1e-3)
    # ... pointing outwards, along the caliper
    assert np.linalg.norm(found[1] - found[0]) == pytest.approx(np.linalg.norm(corners[1] - corners[0]) + 1, abs=1e-3)
    assert ends[0, 2] == ends[1, 2] and slices.min() <= ends[0, 2] <= slices.max()
    assert ends[0, 2] == pytest.approx(round(ends[0, 2]), abs=1e-6)

    figure = lesion_figure(volume, lesion)
    lines = {line.get_label(): line for line in figure.axes[0].lines if isinstance(line, Line2D)}
    long_xy = np.c_[lines["long axis"].get_xdata(), lines["long axis"].get_ydata()]
    short_xy = np.c_[lines["short axis"].get_xdata(), lines["short axis"].get_ydata()]
    # drawn in the axes' mm, pixel centres at +0.5 pixel: the ends' pixel coordinates
    np.testing.assert_allclose(long_xy[:, 0], (ends[:, 1] + 0.5) * volume.column_mm, atol=1e-6)
    np.testing.assert_allclose(long_xy[:, 1], (ends[:, 0] + 0.5) * volume.row_mm, atol=1e-6)
    assert np.linalg.norm(long_xy[1] - long_xy[0]) == pytest.approx(lesion["longest_axial_diameter_mm"], abs=1e-3)
    assert np.linalg.norm(short_xy[1] - short_xy[0]) == pytest.approx(lesion["short_axis_diameter_mm"], abs=1e-3)
    assert abs(np.dot(long_xy[1] - long_xy[0], short_xy[1] - short_xy[0])) < 1e-6  # perpendicular


def _neighbours(plane: np.ndarray, row: int, column: int) -> int:
    window = plane[max(row - 1, 0) : row + 2, max(column - 1, 0) : column + 2]
    return int(window.sum()) - 1


def test_ras_and_lps_storage_draw_the_same_calipers() -> None:
    drawn = []
    for mask, affine in ((box_with_corner(), AFFINE), to_lps(box_with_corner(), AFFINE)):
        lesion = tumour_report(mask, affine)["lesions"][0]
        volume = _DisplayVolume(np.zeros(mask.shape, dtype=np.float32), affine, {"lesion": mask})
        drawn.append(display_pixels(volume, lesion["longest_axial_diameter_endpoints_lps_mm"]))
    first, second = (ends[np.lexsort(ends.T[::-1])] for ends in drawn)  # the two ends, in either order
    np.testing.assert_allclose(first, second, atol=1e-6)


def test_pictured_lesions_are_the_targets_or_else_the_largest() -> None:
    mask = np.zeros(SHAPE, dtype=bool)
    hu = chest()
    add_sphere(hu, mask, (45.0, 0.0, 10.0), 3.0)  # 6 mm: not measurable
    add_sphere(hu, mask, (-45.0, 0.0, 10.0), 4.0)  # 8 mm: not measurable, the largest
    report = tumour_report(mask, AFFINE)
    assert report["recist"]["target_lesions"] == [] and pictured_lesions(report) == [1]
    assert report["lesions"][0]["centroid_world_mm"][0] == pytest.approx(-45.0, abs=0.5)
    page = report_html(tumour_report(np.zeros(SHAPE, dtype=bool), AFFINE), {}, "empty")
    assert "No tumour found." in page and "data:image" not in page


def two_lesion_case() -> tuple[np.ndarray, np.ndarray]:
    hu = chest()
    mask = np.zeros(SHAPE, dtype=bool)
    add_sphere(hu, mask, (45.0, 0.0, 10.0), 12.0)  # the patient's right lung (RAS x > 0)
    add_box(hu, mask, voxel_index(-60, -10, -10), voxel_index(-45, 5, 0))  # the left lung
    return hu, mask


def test_page_renders_in_a_headless_browser(tmp_path: Path) -> None:
    browser = shutil.which("chromium")
    if browser is None:
        pytest.skip("chromium is not on PATH (Debian: apt-get install chromium); the page is not rendered")
    hu, mask = two_lesion_case()
    report = {"generator": "lung-tumor predict", **tumour_report(mask, AFFINE, hu), "source": "phantom.nii.gz"}
    path = write_report_html(report, mask, hu, AFFINE, tmp_path / "case_report.html", "case")
    page = path.read_text()

    # the numbers and the disclaimer, first thing on the page
    assert page.index(report["disclaimer"]) < page.index("Summary")
    for lesion in report["lesions"]:
        for key in ("longest_axial_diameter_mm", "short_axis_diameter_mm", "greatest_3d_diameter_mm"):
            assert f"<td class=num>{lesion[key]:.1f}</td>" in page
        assert f"<td class=num>{lesion['volume_ml']:.2f}</td>" in page
    assert f"sum of diameters {report['recist']['sum_of_diameters_mm']:.1f} mm" in page
    assert report["t_category"]["category"] in page
    # self-contained: the two pictures embedded, nothing fetched
    uris = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert report["recist"]["target_lesions"] == [1, 2] and len(uris) == 2
    assert not re.search(r"(src|href)=\"(?!data:)", page) and "<script" not in page and "<link" not in page
    for uri in uris:
        with Image.open(io.BytesIO(base64.b64decode(uri))) as picture:
            assert picture.size == (1100, 520)

    screenshot = tmp_path / "out.png"
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={screenshot}",
            "--window-size=1200,1600",
            path.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    with Image.open(screenshot) as shot:
        assert shot.size == (1200, 1600)
        pixels = np.asarray(shot.convert("RGB")).astype(int)
    # the CT in the lung window: the phantom's lung (-850 HU) is grey 85 of 255, soft tissue light grey
    grey = (np.ptp(pixels, axis=2) <= 3) & (np.abs(pixels[..., 0] - 85) <= 6)
    rows, columns = np.nonzero(grey)
    assert grey.sum() > 50_000, "no CT picture on the screenshot"
    assert columns.max() - columns.min() > 600  # axial and coronal panels side by side
    yellow = np.all(np.abs(pixels - [0xF0, 0xE4, 0x42]) <= 12, axis=2)
    assert LONG_AXIS_COLOUR == "#F0E442" and yellow.sum() > 100, "no caliper drawn on the screenshot"
    assert len(np.unique(pixels[rows.min() : rows.max() + 1].reshape(-1, 3), axis=0)) > 50

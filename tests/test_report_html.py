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
from PIL import Image
from scipy import ndimage

from lung_tumor.report import tumour_report
from lung_tumor.report_html import (
    LONG_AXIS_COLOUR,
    PANEL_LEFT,
    PANEL_TOP,
    PICTURE_SIZE,
    SHORT_AXIS_COLOUR,
    _rgb,
    display_pixels,
    lesion_picture,
    pictured_lesions,
    report_html,
    write_report_html,
)
from lung_tumor.visualize import PREDICTION_COLOUR, _DisplayVolume

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

    picture = lesion_picture(volume, lesion)
    long_xy, short_xy = picture.long_axis_mm, picture.short_axis_mm
    # drawn in the axial plane's mm, pixel centres at +0.5 pixel: the ends' pixel coordinates
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


def _panel_voxels(picture, volume: _DisplayVolume, which: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A panel's pixels and the displayed voxel index under each of its pixel rows and columns (-1: off the scan)."""
    panel = picture.panels[which]
    shape = volume.image.shape
    if which == 0:  # axial: rows and columns of the displayed slice
        rows = panel.voxels(volume.row_mm, shape[0], vertical=True)
    else:  # coronal: slices (superior up) and columns of the displayed row
        rows = panel.voxels(float(np.linalg.norm(volume.affine[:3, 2])), shape[2], vertical=True)
    columns = panel.voxels(volume.column_mm, shape[1], vertical=False)
    left = PANEL_LEFT[which]
    return picture.pixels[PANEL_TOP : PANEL_TOP + panel.size, left : left + panel.size], rows, columns


@pytest.mark.parametrize("storage", ["RAS", "LPS"])
def test_picture_outlines_the_lesion_on_its_own_voxels_and_draws_the_calipers_at_their_ends(storage: str) -> None:
    hu, mask = two_lesion_case()
    affine = AFFINE
    if storage == "LPS":
        (hu, affine), (mask, _) = to_lps(hu, AFFINE), to_lps(mask, AFFINE)
    report = tumour_report(mask, affine, hu)
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    for lesion in report["lesions"]:
        alone = labels == labels[tuple(int(round(c)) for c in lesion["centroid_voxel"])]
        volume = _DisplayVolume(hu, affine, {"lesion": alone})
        picture = lesion_picture(volume, lesion)
        assert picture.pixels.shape == (PICTURE_SIZE[1], PICTURE_SIZE[0], 3)
        assert f"slice {lesion['longest_axial_diameter_slice_number']} " in picture.headings[0]
        shown = volume.masks["lesion"]

        # axial: the outline's colour on the lesion's voxels of the slice only, on every voxel of its edge
        pixels, rows, columns = _panel_voxels(picture, volume, 0)
        on_scan = (rows >= 0)[:, None] & (columns >= 0)[None, :]
        # radiological view: anterior up (the displayed rows run anterior -> posterior), patient's right on the left
        assert np.all(np.diff(rows[rows >= 0]) >= 0) and np.all(np.diff(columns[columns >= 0]) >= 0)
        where = np.ix_(np.maximum(rows, 0), np.maximum(columns, 0))
        section = shown[:, :, picture.axial_slice]
        on_lesion = section[where] & on_scan
        outline = np.all(pixels == _rgb(PREDICTION_COLOUR), axis=2)
        callipers = np.all(pixels == _rgb(LONG_AXIS_COLOUR), axis=2) | np.all(pixels == _rgb(SHORT_AXIS_COLOUR), axis=2)
        assert outline.sum() > 100 and not (outline & ~on_lesion).any()
        edge = section & ~ndimage.binary_erosion(section)
        for row, column in np.argwhere(edge):
            under = (rows == row)[:, None] & (columns == column)[None, :]
            assert (under & (outline | callipers)).any(), f"edge voxel {row, column} not outlined"
        # elsewhere the CT in the lung window, voxel by voxel (letters and scale bar aside)
        plain = on_scan & ~on_lesion & ~callipers
        lung_window = (volume.image[:, :, picture.axial_slice][where] + 1350.0) * 256 / 1500  # W1500 / L-600
        expected = np.clip(np.floor(lung_window), 0, 255)
        assert np.mean(pixels[..., 0][plain] == expected[plain]) > 0.97
        # the long axis's ends (markers) on the lesion's corner voxels, the short axis's ends in blue
        for x, y in picture.long_axis_pixels:
            i, j = int(y) - PANEL_TOP, int(x) - PANEL_LEFT[0]
            assert tuple(pixels[i, j]) == _rgb(LONG_AXIS_COLOUR) and section[rows[i], columns[j]]
        short = picture.short_axis_pixels
        for end, other in ((short[0], short[1]), (short[1], short[0])):
            x, y = end + 3 * (other - end) / np.linalg.norm(other - end)  # 3 pixels in from the end
            i, j = int(y) - PANEL_TOP, int(x) - PANEL_LEFT[0]
            around = pixels[i - 1 : i + 2, j - 1 : j + 2]  # a line 3 pixels wide covers one of these
            assert np.all(around == _rgb(SHORT_AXIS_COLOUR), axis=2).any()

        # coronal: the outline on the lesion's voxels of the row, the dashed line on the axial slice shown
        pixels, slices, columns = _panel_voxels(picture, volume, 1)
        assert np.all(np.diff(slices[slices >= 0]) <= 0)  # superior up (the displayed slices run upwards)
        where = np.ix_(np.maximum(slices, 0), np.maximum(columns, 0))
        along_row = shown[picture.coronal_row].T
        on_lesion = along_row[where] & (slices >= 0)[:, None] & (columns >= 0)[None, :]
        outline = np.all(pixels == _rgb(PREDICTION_COLOUR), axis=2)
        assert outline.sum() > 100 and not (outline & ~on_lesion).any()
        dashes = np.all(pixels == _rgb(LONG_AXIS_COLOUR), axis=2)
        assert dashes.sum() > 100 and set(slices[np.flatnonzero(dashes.any(axis=1))]) == {picture.axial_slice}


def test_page_gives_each_picture_its_panels_headings(tmp_path: Path) -> None:
    hu, mask = two_lesion_case()
    report = tumour_report(mask, AFFINE, hu)
    page = write_report_html(report, mask, hu, AFFINE, tmp_path / "case_report.html", "case").read_text()
    for number in report["recist"]["target_lesions"]:
        lesion = report["lesions"][number - 1]
        picture = page.index(f"<h2>Lesion {number} (target)</h2>")
        axial = page.index(f"<div class=panels><p>axial, slice {lesion['longest_axial_diameter_slice_number']} (z = ")
        coronal = page.index(
            f"<p>coronal through the centroid: craniocaudal extent {lesion['craniocaudal_extent_mm']:.1f}"
        )
        assert picture < axial < coronal < page.index('<img src="data:image/png', picture)
        assert f"long axis {lesion['longest_axial_diameter_mm']:.1f} mm, short axis" in page[axial:coronal]

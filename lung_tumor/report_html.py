"""The tumour report as one self-contained HTML page: the numbers, and pictures of the lesions with calipers.

``lung-tumor predict`` writes ``CASE_report.html`` beside ``CASE_report.json`` and ``.txt`` (unless
``--no-html`` or ``--no-report``). The page has no external asset: the pictures are PNGs embedded as base64
``data:`` URIs, the style sheet is inline, so the file can be mailed or archived alone. It shows, from the
top: the disclaimer, the summary (volume, lesion count, grid), RECIST 1.1 and the size-based T descriptor,
a table of the lesions (calipers, slice numbers, location, contacts, attenuation, confidence, flags), and
for each RECIST target lesion (the largest lesion when there is no target):

- the axial slice through its longest axial diameter, zoomed on the lesion, in a lung window and in
  radiological view (patient's right on the image's left, anterior up) with the lesion's outline, the long
  axis drawn between the report's endpoints (``longest_axial_diameter_endpoints_lps_mm``, converted from
  LPS mm to the displayed pixel grid through the affine, :func:`display_pixels`) and the short axis:
  perpendicular to it, of the report's ``short_axis_diameter_mm``, centred on the section's extent across
  the long axis (the report gives no short-axis endpoints);
- the coronal slice through the lesion's centroid (patient's right on the left, superior up) with its
  outline and a dashed line at the axial slice shown, for its craniocaudal extent.

The two panels are drawn with numpy and PIL, not matplotlib (:func:`lesion_picture`, a few milliseconds
instead of about half a second a lesion): the CT's voxels under each pixel (nearest voxel) in the lung
window, the lesion's outline on its own edge voxels, the calipers as lines, the patient directions and a
scale bar in the panels; the headings (slice, z, diameters) are the page's text above the picture.

The page is vouched for as lung-tumor's by ``CASE_report.json`` (:mod:`lung_tumor.outputs`), and also
names its generator in a ``<meta name="generator">`` tag.
"""

from __future__ import annotations

import base64
import copy
import html
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo
from scipy import ndimage

from lung_tumor.cores import executor, thread_count
from lung_tumor.evaluation.lesions import lesion_components
from lung_tumor.io import write_atomic
from lung_tumor.outputs import marker
from lung_tumor.visualize import (
    DISPLAY_AXCODES,
    LUNG_WINDOW_LEVEL,
    LUNG_WINDOW_WIDTH,
    PREDICTION_COLOUR,
    _DisplayVolume,
)

log = logging.getLogger(__name__)

# Okabe-Ito yellow and sky blue: the calipers stand out from the vermillion contour and the grey CT.
LONG_AXIS_COLOUR, SHORT_AXIS_COLOUR = "#F0E442", "#56B4E9"
PICTURE_SIZE = (1100, 520)  # width, height in pixels: the axial and the coronal panel side by side
PANEL_PIXELS, PANEL_LEFT, PANEL_TOP = 500, (25, 575), 10
OFF_SCAN_COLOUR = (0x40, 0x40, 0x60)  # beyond the scan's edge: neither air (grey 59) nor black
OUTLINE_PIXELS = 2  # the lesion's outline, drawn on its own voxels
CALIPER_PIXELS, ENDPOINT_RADIUS_PIXELS = 3, 4
DASH_PIXELS = (8, 6)  # on, off
LETTER_PIXELS = 16
SCALE_BARS_MM = (5.0, 10.0, 20.0, 50.0, 100.0)
VIEW_MARGIN_MM = 20.0
PNG_COMPRESS_LEVEL = 1


def display_pixels(volume: _DisplayVolume, points_lps_mm: Any) -> np.ndarray:
    """Points in patient LPS mm as (row, column, slice) indices of the displayed (radiological) array.

    Row and column are continuous pixel indices with the pixel centres at whole numbers; slice is the index
    along the displayed array's third (inferior -> superior) axis.

    Args:
        volume: the displayed volume (its ``affine`` maps displayed indices to RAS mm).
        points_lps_mm: (N, 3) points in DICOM LPS mm, as the report gives them.
    """
    points = np.atleast_2d(np.asarray(points_lps_mm, dtype=float))
    ras = points * np.array([-1.0, -1.0, 1.0])
    homogeneous = np.c_[ras, np.ones(len(ras))]
    return (np.linalg.inv(volume.affine) @ homogeneous.T).T[:, :3]


def pixels_to_mm(volume: _DisplayVolume, rows: Any, columns: Any) -> tuple[np.ndarray, np.ndarray]:
    """Displayed pixel indices to the axes' mm of :meth:`_DisplayVolume.draw` (pixel centres at +0.5 pixel)."""
    x = (np.asarray(columns, dtype=float) + 0.5) * volume.column_mm
    y = (np.asarray(rows, dtype=float) + 0.5) * volume.row_mm
    return x, y


def short_axis_mm(volume: _DisplayVolume, section: np.ndarray, long_ends_xy: np.ndarray, short_mm: float) -> np.ndarray:
    """Endpoints (2, 2) in axes mm of the short axis drawn: perpendicular to the long axis, ``short_mm`` long.

    It crosses the long axis at the section's centroid projected onto it and is centred on the section's
    extent across the long axis.
    """
    along = long_ends_xy[1] - long_ends_xy[0]
    along = along / max(float(np.linalg.norm(along)), 1e-12)
    across = np.array([-along[1], along[0]])
    rows, columns = np.nonzero(section)
    x, y = pixels_to_mm(volume, rows, columns)
    points = np.c_[x, y]
    projected = points @ across
    centre_along = float(points.mean(axis=0) @ along)
    centre_across = float(projected.min() + projected.max()) / 2
    centre = centre_along * along + centre_across * across
    return np.stack([centre - across * short_mm / 2, centre + across * short_mm / 2])


def _square_box(x0: float, x1: float, y0: float, y1: float, margin: float) -> tuple[float, float, float, float]:
    half = max(x1 - x0, y1 - y0) / 2 + margin
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return cx - half, cx + half, cy - half, cy + half


class _LesionMask:
    """One lesion's mask in the displayed voxel order, kept as a crop of the displayed grid (no full-size copy).

    Args:
        crop: the mask on the displayed voxels of ``box``.
        box: where ``crop`` lies in the displayed array.
        shape: the displayed array's shape.
    """

    def __init__(self, crop: np.ndarray, box: tuple[slice, ...], shape: tuple[int, ...]) -> None:
        self.crop, self.box, self.shape = np.asarray(crop, dtype=bool), box, tuple(shape)

    @classmethod
    def whole(cls, mask: np.ndarray) -> _LesionMask:
        return cls(mask, tuple(slice(0, n) for n in np.shape(mask)), np.shape(mask))

    def _place(self, part: np.ndarray, axes: tuple[int, ...], dtype: Any = bool) -> np.ndarray:
        """``part`` (a reduction of the crop keeping ``axes``) on the whole displayed grid of those axes."""
        whole = np.zeros([self.shape[a] for a in axes], dtype=dtype)
        whole[tuple(self.box[a] for a in axes)] = part
        return whole

    def axial(self, k: int) -> np.ndarray:
        """The (row, column) section on displayed slice ``k``."""
        start, stop = self.box[2].start, self.box[2].stop
        if not start <= k < stop:
            return np.zeros(self.shape[:2], dtype=bool)
        return self._place(self.crop[:, :, k - start], (0, 1))

    def coronal(self, row: int) -> np.ndarray:
        """The (column, slice) section on displayed row ``row``."""
        start, stop = self.box[0].start, self.box[0].stop
        if not start <= row < stop:
            return np.zeros(self.shape[1:], dtype=bool)
        return self._place(self.crop[row - start], (1, 2))

    def any_along(self, axis: int) -> np.ndarray:
        """Whether any voxel is set along ``axis``: the projection on the two other axes."""
        return self._place(self.crop.any(axis=axis), tuple(a for a in range(3) if a != axis))

    def row_counts(self) -> np.ndarray:
        """Voxels per displayed row."""
        return self._place(self.crop.sum(axis=(1, 2)), (0,), dtype=np.int64)


@dataclass
class _Panel:
    """A square view of one plane of the CT: ``box`` = (x0, x1, y0, y1) in the plane's mm, on ``size`` pixels.

    Picture x grows with the plane's x; picture y grows with the plane's y, or against it when ``upward``
    (the coronal plane: superior up).
    """

    box: tuple[float, float, float, float]
    size: int = PANEL_PIXELS
    upward: bool = False

    def to_pixels(self, x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        """Plane mm to continuous picture coordinates of the panel (pixel ``i`` covers ``[i, i + 1)``)."""
        x0, x1, y0, y1 = self.box
        px = (np.asarray(x, dtype=float) - x0) / (x1 - x0) * self.size
        py = (np.asarray(y, dtype=float) - y0) / (y1 - y0) * self.size
        return px, (self.size - py if self.upward else py)

    def voxels(self, step_mm: float, count: int, vertical: bool) -> np.ndarray:
        """The voxel index (of ``count`` voxels ``step_mm`` apart) under each pixel column or row; -1 off the scan."""
        x0, x1, y0, y1 = self.box
        low, high = (y0, y1) if vertical else (x0, x1)
        centres = low + (np.arange(self.size) + 0.5) * (high - low) / self.size
        if vertical and self.upward:
            centres = centres[::-1]
        index = np.floor(centres / step_mm).astype(np.int64)
        return np.where((index >= 0) & (index < count), index, -1)


def _window(values: np.ndarray) -> np.ndarray:
    """HU in the lung window as grey levels 0-255, as matplotlib's ``gray`` colour map shows them."""
    lo = LUNG_WINDOW_LEVEL - LUNG_WINDOW_WIDTH / 2
    level = np.floor((np.asarray(values, dtype=np.float32) - lo) * (256.0 / LUNG_WINDOW_WIDTH))
    return np.clip(level, 0, 255).astype(np.uint8)


def _draw_plane(plane: np.ndarray, section: np.ndarray, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """One panel's RGB pixels: the CT ``plane`` (2D) under the pixels, nearest voxel, and ``section``'s outline.

    ``rows`` and ``columns`` are the plane's voxel index under each pixel row and column (-1: off the scan,
    drawn :data:`OFF_SCAN_COLOUR`). The outline is the section's pixels within :data:`OUTLINE_PIXELS` of a pixel
    outside it: drawn on the lesion's own voxels only, along their edges.
    """
    on_scan = (rows >= 0)[:, None] & (columns >= 0)[None, :]
    where = np.ix_(np.maximum(rows, 0), np.maximum(columns, 0))
    grey = _window(plane[where])
    rgb = np.repeat(grey[..., None], 3, axis=2)
    rgb[~on_scan] = OFF_SCAN_COLOUR
    inside = section[where] & on_scan
    if inside.any():
        core = ndimage.binary_erosion(inside, structure=np.ones((3, 3), dtype=bool), iterations=OUTLINE_PIXELS)
        rgb[inside & ~core] = _rgb(PREDICTION_COLOUR)
    return rgb


def _rgb(colour: str) -> tuple[int, int, int]:
    return tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))


def _dashed_row(draw: ImageDraw.ImageDraw, y: float, width: int, colour: str) -> None:
    for start in range(0, width, DASH_PIXELS[0] + DASH_PIXELS[1]):
        draw.line([(start, y), (min(start + DASH_PIXELS[0], width) - 1, y)], fill=colour, width=1)


def _labels(
    draw: ImageDraw.ImageDraw, size: int, letters: tuple[str, str, str, str], scale_mm: float, px_mm: float
) -> None:
    """Patient directions at the left, right, top and bottom edges, and a scale bar of ``scale_mm`` bottom left."""
    font = ImageFont.load_default(size=LETTER_PIXELS)
    places = ((4, size / 2, "lm"), (size - 4, size / 2, "rm"), (size / 2, 4, "mt"), (size / 2, size - 4, "mb"))
    for text, (x, y, anchor) in zip(letters, places, strict=True):
        draw.text((x, y), text, font=font, fill="white", anchor=anchor, stroke_width=2, stroke_fill="black")
    length = scale_mm * px_mm
    bottom = size - 10
    draw.rectangle([10, bottom - 4, 10 + length, bottom], fill="white", outline="black")
    draw.text(
        (10, bottom - 7), f"{scale_mm:g} mm", font=font, fill="white", anchor="lb", stroke_width=2, stroke_fill="black"
    )


def _scale_bar_mm(panel_mm: float) -> float:
    """The longest of 5, 10, 20, 50, 100 mm that spans at most a quarter of the panel."""
    fitting = [length for length in SCALE_BARS_MM if length <= panel_mm / 4]
    return fitting[-1] if fitting else SCALE_BARS_MM[0]


@dataclass
class LesionPicture:
    """One lesion's picture for the page: the axial and the coronal panel side by side, and what is drawn where.

    Attributes:
        pixels: (520, 1100, 3) RGB, the axial panel on the left, the coronal panel on the right.
        headings: the axial and the coronal panel's headings, shown above the picture on the page.
        long_axis_mm, short_axis_mm: the calipers' ends (2, 2) as (x, y) in the axial plane's mm (pixel
            centres at +0.5 pixel, :func:`pixels_to_mm`).
        long_axis_pixels, short_axis_pixels: the same ends (2, 2) as continuous (x, y) picture coordinates
            (pixel ``i`` covers ``[i, i + 1)``).
        axial_slice: the displayed slice shown in the axial panel; ``coronal_row`` the displayed row in the
            coronal panel.
        panels: the axial and the coronal :class:`_Panel`.
    """

    pixels: np.ndarray
    headings: tuple[str, str]
    long_axis_mm: np.ndarray
    short_axis_mm: np.ndarray
    long_axis_pixels: np.ndarray
    short_axis_pixels: np.ndarray
    axial_slice: int
    coronal_row: int
    panels: tuple[_Panel, _Panel] = field(repr=False)


def lesion_picture(volume: _DisplayVolume, lesion: dict[str, Any], name: str = "lesion") -> LesionPicture:
    """Axial slice with contour and calipers, and coronal slice, of one lesion of the report (numpy and PIL).

    Args:
        volume: the displayed CT with the mask of this lesion alone as ``masks["lesion"]`` (the whole displayed
            grid, or a :class:`_LesionMask` crop of it).
        lesion: the lesion's entry in the report.
        name: the mask's key in ``volume.masks``.

    Returns:
        The picture, with the calipers' ends in mm and in picture pixels and the panels' headings.
    """
    mask = volume.masks[name]
    if not isinstance(mask, _LesionMask):
        mask = _LesionMask.whole(mask)
    image = volume.image
    ends = display_pixels(volume, lesion["longest_axial_diameter_endpoints_lps_mm"])
    k = int(round(float(ends[:, 2].mean())))
    canvas = np.full((PICTURE_SIZE[1], PICTURE_SIZE[0], 3), 255, dtype=np.uint8)

    # axial: the slice of the longest diameter, zoomed on the lesion's section
    section = mask.axial(k)
    rows, columns = np.nonzero(section if section.any() else mask.any_along(2))
    x, y = pixels_to_mm(volume, rows, columns)
    half_column, half_row = volume.column_mm / 2, volume.row_mm / 2
    axial = _Panel(
        _square_box(x.min() - half_column, x.max() + half_column, y.min() - half_row, y.max() + half_row, 15.0)
    )
    pixels = _draw_plane(
        image[:, :, k],
        section,
        axial.voxels(volume.row_mm, image.shape[0], vertical=True),
        axial.voxels(volume.column_mm, image.shape[1], vertical=False),
    )
    long_mm = np.c_[pixels_to_mm(volume, ends[:, 0], ends[:, 1])]
    short_mm = short_axis_mm(volume, section, long_mm, float(lesion["short_axis_diameter_mm"]))
    long_px, short_px = np.c_[axial.to_pixels(*long_mm.T)], np.c_[axial.to_pixels(*short_mm.T)]
    panel = Image.fromarray(pixels)
    draw = ImageDraw.Draw(panel)
    # PIL addresses pixels by index: the continuous coordinate of a pixel's centre less a half
    long_at, short_at = [tuple(p) for p in long_px - 0.5], [tuple(p) for p in short_px - 0.5]
    draw.line(long_at, fill=LONG_AXIS_COLOUR, width=CALIPER_PIXELS)
    for px, py in long_at:
        r = ENDPOINT_RADIUS_PIXELS
        draw.ellipse([px - r, py - r, px + r, py + r], fill=LONG_AXIS_COLOUR)
    draw.line(short_at, fill=SHORT_AXIS_COLOUR, width=CALIPER_PIXELS)
    axial_mm = axial.box[1] - axial.box[0]
    _labels(draw, axial.size, ("R", "L", "A", "P"), _scale_bar_mm(axial_mm), axial.size / axial_mm)
    canvas[PANEL_TOP : PANEL_TOP + axial.size, PANEL_LEFT[0] : PANEL_LEFT[0] + axial.size] = np.asarray(panel)

    # coronal: through the lesion's centroid, superior up, for its craniocaudal extent
    centroid = display_pixels(volume, lesion["centroid_lps_mm"])[0]
    row = int(np.clip(round(float(centroid[0])), 0, image.shape[0] - 1))
    along_row = mask.coronal(row)
    if not along_row.any():  # a curved lesion may miss its own centroid: take its fullest coronal row
        row = int(np.argmax(mask.row_counts()))
        along_row = mask.coronal(row)
    slice_mm = float(np.linalg.norm(volume.affine[:3, 2]))
    columns, slices = np.nonzero(mask.any_along(0))
    coronal = _Panel(
        _square_box(
            columns.min() * volume.column_mm,
            (columns.max() + 1) * volume.column_mm,
            slices.min() * slice_mm,
            (slices.max() + 1) * slice_mm,
            VIEW_MARGIN_MM,
        ),
        upward=True,
    )
    pixels = _draw_plane(
        image[row].T,
        along_row.T,
        coronal.voxels(slice_mm, image.shape[2], vertical=True),
        coronal.voxels(volume.column_mm, image.shape[1], vertical=False),
    )
    panel = Image.fromarray(pixels)
    draw = ImageDraw.Draw(panel)
    _, dash_y = coronal.to_pixels(0.0, (k + 0.5) * slice_mm)
    _dashed_row(draw, float(dash_y) - 0.5, coronal.size, LONG_AXIS_COLOUR)
    coronal_mm = coronal.box[1] - coronal.box[0]
    _labels(draw, coronal.size, ("R", "L", "S", "I"), _scale_bar_mm(coronal_mm), coronal.size / coronal_mm)
    canvas[PANEL_TOP : PANEL_TOP + coronal.size, PANEL_LEFT[1] : PANEL_LEFT[1] + coronal.size] = np.asarray(panel)

    headings = (
        f"axial, slice {lesion['longest_axial_diameter_slice_number']} (z = "
        f"{(volume.affine @ np.array([0.0, 0.0, k, 1.0]))[2]:.1f} mm): long axis "
        f"{lesion['longest_axial_diameter_mm']:.1f} mm, short axis {lesion['short_axis_diameter_mm']:.1f} mm",
        f"coronal through the centroid: craniocaudal extent {lesion['craniocaudal_extent_mm']:.1f} mm (slices "
        f"{lesion['axial_slice_numbers'][0]}-{lesion['axial_slice_numbers'][1]}; dashed: the axial slice shown)",
    )
    shift = np.array([PANEL_LEFT[0], PANEL_TOP], dtype=float)
    return LesionPicture(
        pixels=canvas,
        headings=headings,
        long_axis_mm=long_mm,
        short_axis_mm=short_mm,
        long_axis_pixels=long_px + shift,
        short_axis_pixels=short_px + shift,
        axial_slice=k,
        coronal_row=row,
        panels=(axial, coronal),
    )


def _displayed(array: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """``array`` in the voxel order of :class:`_DisplayVolume` (rows anterior -> posterior, columns right -> left)."""
    transform = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(np.asarray(affine, dtype=float)),
        nib.orientations.axcodes2ornt(DISPLAY_AXCODES),
    )
    return nib.orientations.apply_orientation(array, transform)


def _displayed_box(box: tuple[slice, ...], affine: np.ndarray, shape: tuple[int, ...]) -> tuple[slice, ...]:
    """Where the voxels of ``box`` (of an array of ``shape`` on ``affine``'s grid) lie in the displayed array."""
    transform = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(np.asarray(affine, dtype=float)),
        nib.orientations.axcodes2ornt(DISPLAY_AXCODES),
    )
    shown: list[slice] = [slice(0, 0)] * 3
    for axis, (target, flip) in enumerate(transform):
        start, stop = box[axis].start, box[axis].stop
        shown[int(target)] = slice(shape[axis] - stop, shape[axis] - start) if flip < 0 else slice(start, stop)
    return tuple(shown)


def _png_data_uri(picture: LesionPicture) -> str:
    buffer = io.BytesIO()
    info = PngInfo()
    info.add_text("Software", marker("predict", "report"))
    # zlib level 1: about a tenth larger than the default 6, encoded several times faster
    Image.fromarray(picture.pixels).save(buffer, format="png", pnginfo=info, compress_level=PNG_COMPRESS_LEVEL)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def pictured_lesions(report: dict[str, Any]) -> list[int]:
    """The lesions pictured: the RECIST targets, or the largest lesion when there is none (none without lesions)."""
    targets = list(report["recist"]["target_lesions"])
    if targets:
        return targets
    return [report["lesions"][0]["lesion"]] if report["lesions"] else []


# --- the page ---------------------------------------------------------------------------------------------

STYLE = """
body { font-family: sans-serif; margin: 1.5em auto; max-width: 1150px; color: #222; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
h2 { font-size: 1.2em; margin-top: 1.4em; border-bottom: 1px solid #ccc; }
.disclaimer { background: #fde9d9; border: 2px solid #D55E00; padding: 0.6em 1em; font-weight: bold; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.5em; text-align: left; vertical-align: top; }
th { background: #eee; }
td.num { text-align: right; }
figure { margin: 1em 0; }
figure img { width: 1100px; height: 520px; display: block; }
.panels { display: flex; width: 1100px; font-size: 0.9em; }
.panels p { width: 550px; margin: 0.2em 0; padding: 0 25px; box-sizing: border-box; }
figcaption { font-size: 0.85em; color: #444; }
.note { font-size: 0.85em; color: #555; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _mm(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _point(values: list[float]) -> str:
    return "(" + ", ".join(f"{c:.1f}" for c in values) + ")"


def _contact(finding: dict[str, Any] | None) -> str:
    if not finding:
        return "not assessed"
    if finding.get("contact") is None:
        return f"not assessed ({finding.get('note') or 'unknown'})"
    if finding["contact"]:
        return f"yes, {_mm(finding.get('contact_length_mm'))} mm long"
    gap = finding.get("gap_mm")
    return "no" + ("" if gap is None else f" (gap {gap:.1f} mm)")


def _lesion_row(lesion: dict[str, Any]) -> str:
    location = lesion.get("location") or {}
    contacts = lesion.get("contacts") or {}
    attenuation = lesion.get("attenuation")
    kind = "-" if attenuation is None else f"{attenuation['kind']}, {attenuation['hu_mean']:.0f} HU"
    probability = (
        "-"
        if lesion.get("probability_mean") is None
        else f"{lesion['probability_mean']:.2f} / {lesion['probability_max']:.2f}"
    )
    flags = ", ".join(name.replace("_", "-") for name, on in lesion["flags"].items() if on) or "-"
    where = ", ".join(str(location.get(key, "-")) for key in ("lung", "zone", "depth")) if location else lesion["side"]
    contact_text = (
        "<br>".join(
            f"{label}: {_e(_contact(contacts.get(key)))}"
            for key, label in (("chest_wall", "chest wall"), ("diaphragm", "diaphragm"), ("mediastinum", "mediastinum"))
        )
        if contacts
        else _e(lesion.get("contact_note") or "not assessed")
    )
    first, last = lesion["axial_slice_numbers"]
    cells = [
        f"<td class=num>{lesion['lesion']}</td>",
        f"<td>{_e(lesion['recist_role'])}{'' if lesion['recist_measurable'] else ' (not measurable)'}</td>",
        f"<td class=num>{lesion['volume_ml']:.2f}</td>",
        f"<td class=num>{lesion['longest_axial_diameter_mm']:.1f}</td>",
        f"<td class=num>{lesion['short_axis_diameter_mm']:.1f}</td>",
        f"<td class=num>{lesion['greatest_3d_diameter_mm']:.1f}</td>",
        f"<td class=num>{lesion['craniocaudal_extent_mm']:.1f}</td>",
        f"<td class=num>{lesion['longest_axial_diameter_slice_number']} ({first}-{last})</td>",
        f"<td>{_e(where)}</td>",
        f"<td>{contact_text}</td>",
        f"<td>{_e(kind)}</td>",
        f"<td>{probability}</td>",
        f"<td>{_e(flags)}</td>",
    ]
    return "<tr>" + "".join(cells) + "</tr>"


def _provenance(provenance: dict[str, Any] | None, source: str | None) -> str:
    if not provenance:
        return f"<p class=note>source: {_e(source or 'unknown')}; no provenance recorded.</p>"
    settings = provenance.get("post_processing", {})
    rows = [
        ("package", f"{provenance.get('package', 'lung_tumor')} {provenance.get('package_version', '')}"),
        ("run", provenance.get("run_dir")),
        ("checkpoint", provenance.get("checkpoint")),
        ("threshold", provenance.get("threshold")),
        ("post-processing", ", ".join(f"{k} {v}" for k, v in settings.items())),
        ("input", provenance.get("input")),
        ("input SHA-256", provenance.get("input_sha256")),
        ("series UID", provenance.get("series_instance_uid") or "-"),
        ("report date (UTC)", provenance.get("date_utc")),
    ]
    return "<table>" + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows) + "</table>"


def report_html(
    report: dict[str, Any],
    pictures: dict[int, str],
    title: str = "",
    headings: dict[int, tuple[str, str]] | None = None,
) -> str:
    """The page for ``report`` (a :func:`lung_tumor.report.tumour_report` dict) with lesion pictures (data URIs).

    ``headings`` gives, per pictured lesion, the headings of its axial and coronal panel
    (:attr:`LesionPicture.headings`), shown above its picture.
    """
    recist, t = report["recist"], report["t_category"]
    by_number = {lesion["lesion"]: lesion for lesion in report["lesions"]}
    spacing = " × ".join(f"{s:.2f}" for s in report["spacing_mm"])
    t_text = (
        f"{t['category']} from lesion {t['lesion']}, {t['size_mm']:.1f} mm ({t['size_basis']})"
        if t["category"] is not None
        else f"not assessed ({t['note']})"
    )
    relations = (report.get("lesion_relations") or {}).get("summary")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta name="generator" content="{_e(marker("predict", "report"))}">',
        f"<title>Tumour report {_e(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>Tumour report {_e(title)}</h1>",
        f'<p class="disclaimer">{_e(report["disclaimer"])}</p>',
        "<h2>Summary</h2><table>",
        f"<tr><th>total tumour volume</th><td>{report['total_volume_ml']:.2f} ml in "
        f"{report['lesion_count']} lesion(s)</td></tr>",
        f"<tr><th>RECIST 1.1 target lesions</th><td>{_e(', '.join(map(str, recist['target_lesions'])) or 'none')}; "
        f"sum of diameters {recist['sum_of_diameters_mm']:.1f} mm</td></tr>",
        f"<tr><th>non-target lesions</th><td>{_e(', '.join(map(str, recist['non_target_lesions'])) or 'none')}"
        "</td></tr>",
        f"<tr><th>measurable from</th><td>{recist['min_measurable_diameter_mm']:.1f} mm "
        f"(slice thickness {recist['slice_thickness_mm']:.2f} mm)</td></tr>",
        f"<tr><th>T ({_e(t['label'])})</th><td>{_e(t_text)}<br><span class=note>not assessed: "
        f"{_e('; '.join(t['not_assessed']))}</span></td></tr>",
    ]
    if relations:
        parts.append(f"<tr><th>lesions</th><td>{_e(relations)}</td></tr>")
    parts += [
        f"<tr><th>voxel size</th><td>{spacing} mm (voxel axes {_e(report['orientation'])})</td></tr>",
        f"<tr><th>source</th><td>{_e(report.get('source', '-'))}</td></tr>",
        "</table>",
        "<h2>Lesions</h2>",
    ]
    if report["lesions"]:
        header = (
            "lesion",
            "RECIST",
            "volume (ml)",
            "long axis (mm)",
            "short axis (mm)",
            "3D diameter (mm)",
            "cranio-caudal (mm)",
            "slice (range)",
            "lung, zone, depth",
            "contacts",
            "attenuation",
            "probability mean / max",
            "flags",
        )
        parts.append("<table><tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr>")
        parts += [_lesion_row(lesion) for lesion in report["lesions"]]
        parts.append("</table>")
        parts.append(
            "<p class=note>Diameters edge to edge; slice numbers count from the most inferior slice (1); "
            "coordinates are patient LPS mm, as DICOM viewers show them.</p>"
        )
    else:
        parts.append("<p>No tumour found.</p>")
    for number, uri in pictures.items():
        lesion = by_number[number]
        ends = lesion["longest_axial_diameter_endpoints_lps_mm"]
        panels = (headings or {}).get(number)
        parts += [
            f"<h2>Lesion {number} ({_e(lesion['recist_role'])})</h2><figure>",
            ""
            if panels is None
            else "<div class=panels>" + "".join(f"<p>{_e(text)}</p>" for text in panels) + "</div>",
            f'<img src="{uri}" alt="lesion {number}: axial slice with calipers and coronal slice">',
            f"<figcaption>Lung window W1500/L-600, radiological view (patient's right on the left); scale bar "
            f"bottom left. Long axis (yellow) {lesion['longest_axial_diameter_mm']:.1f} mm from LPS "
            f"{_point(ends[0])} to {_point(ends[1])} mm on slice {lesion['longest_axial_diameter_slice_number']}; "
            f"short axis (blue) {lesion['short_axis_diameter_mm']:.1f} mm, perpendicular to it; outline "
            "(vermillion): the predicted lesion's voxels.</figcaption></figure>",
        ]
    parts += [
        "<h2>Provenance</h2>",
        _provenance(report.get("provenance"), report.get("source")),
        f'<p class="disclaimer">{_e(report["disclaimer"])}</p>',
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _lesion_alone(mask: np.ndarray, affine: np.ndarray, lesion: dict[str, Any]) -> tuple[tuple[slice, ...], np.ndarray]:
    """One lesion of the report found again in ``mask``: its bounding box and its mask there.

    Every voxel of the lesion lies within its greatest 3D diameter of its centroid, so the components are labelled
    in that box around the centroid only (the lesion is whole in it); the lesion is the component whose centroid
    is the report's ``centroid_voxel`` (the report numbers lesions by volume).
    """
    linear = np.asarray(affine, dtype=float)[:3, :3]
    reach = int(np.ceil(lesion["greatest_3d_diameter_mm"] / np.linalg.svd(linear, compute_uv=False).min())) + 1
    centre = np.rint(lesion["centroid_voxel"]).astype(int)
    around = tuple(slice(max(c - reach, 0), min(c + reach + 1, n)) for c, n in zip(centre, np.shape(mask), strict=True))
    components = lesion_components(mask[around])
    start = np.array([s.start for s in around])
    centroids = np.array([np.argwhere(alone).mean(axis=0) + [s.start for s in b] for b, alone in components])
    index = int(np.argmin(np.linalg.norm(centroids + start - lesion["centroid_voxel"], axis=1)))
    local, alone = components[index]
    return tuple(slice(s.start + o, s.stop + o) for s, o in zip(local, start, strict=True)), alone


def write_report_html(
    report: dict[str, Any],
    mask: np.ndarray,
    image_hu: np.ndarray,
    affine: np.ndarray,
    path: str | Path,
    title: str = "",
    workers: int | None = None,
) -> Path:
    """Draw the pictured lesions and write the page atomically; returns the path.

    Args:
        report: the report of ``mask`` (each lesion found again as the component at its ``centroid_voxel``).
        mask: the tumour mask on the CT's grid.
        image_hu: the CT in HU.
        affine: its voxel-to-world (RAS) affine.
        path: the HTML file to write.
        title: the case name shown.
        workers: threads drawing the pictures side by side (default: the cores this process may use).
    """
    pictures: dict[int, str] = {}
    headings: dict[int, tuple[str, str]] = {}
    numbers = pictured_lesions(report)
    volume = _DisplayVolume(image_hu, affine, {}) if numbers else None

    def draw(number: int) -> tuple[str, tuple[str, str]]:
        lesion = next(item for item in report["lesions"] if item["lesion"] == number)
        box, alone = _lesion_alone(mask, affine, lesion)
        shown = copy.copy(volume)  # the same CT, its own lesion: the pictures are drawn side by side
        shown.masks = {
            "lesion": _LesionMask(
                _displayed(alone, affine), _displayed_box(box, affine, np.shape(mask)), volume.image.shape
            )
        }
        picture = lesion_picture(shown, lesion)
        return _png_data_uri(picture), picture.headings

    with executor(min(len(numbers), thread_count(workers))) as pool:
        jobs = [pool.submit(draw, number) for number in numbers]
        for number, job in zip(numbers, jobs, strict=True):
            pictures[number], headings[number] = job.result()
    page = report_html(report, pictures, title, headings)
    return write_atomic(path, lambda f: f.write(page))


__all__ = ["LesionPicture", "display_pixels", "lesion_picture", "pictured_lesions", "report_html", "write_report_html"]

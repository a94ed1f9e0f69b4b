"""Picture gallery of synthetic acquisitions: one synthetic patient, one axial slice, many scanners.

Every picture shows the same phantom (``synthesize_case(CASE, seed=SEED, size="full")``) through a
tumour, acquired with one setting changed from a reference protocol: scan-circle padding, kernel,
slice thickness, a cropped field of view, a rectangular matrix, and the stored orientation (RAS vs
LPS). The stored array is shown as it lies in the file (first voxel axis to the right, second axis
down), with the patient direction at each edge read from the affine, so a flipped orientation shows
as a mirrored picture with its letters swapped. Writes PNGs and ``docs/synthetic_acquisition.md``.

Usage: python scripts/acquisition_gallery.py [--out docs] [--seed 0] [--case 1]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
from matplotlib.figure import Figure

from lung_tumor.data.acquisition import Acquisition
from lung_tumor.data.synth import synthesize_case

REFERENCE = Acquisition(
    pixel_mm=0.78,
    matrix=(512, 512),
    slice_thickness_mm=1.25,
    slice_spacing_mm=1.25,
    kernel="standard",
    noise_hu=15.0,
    padding_hu=-1024,
    slab_slices=1,
)
LUNG_WINDOW = (-1350.0, 350.0)
WIDE_WINDOW = (-2100.0, 500.0)  # shows -2048, -1024 and 0 padding apart
OPPOSITE = {"L": "R", "R": "L", "A": "P", "P": "A", "S": "I", "I": "S"}

# name: (caption, change to the reference, window, zoom box as fractions (x0, x1, y0, y1) or None)
SETTINGS = {
    "reference": ("reference: 512 x 512, 0.78 mm, 1.25 mm slice, standard kernel, padding -1024, LPS", {}, LUNG_WINDOW),
    "padding_2048": ("padding -2048 outside the scan circle (wide window)", {"padding_hu": -2048}, WIDE_WINDOW),
    "padding_0": ("padding 0 outside the scan circle (wide window)", {"padding_hu": 0}, WIDE_WINDOW),
    "padding_none": ("no scan circle: air to the corners (wide window)", {"padding_hu": None}, WIDE_WINDOW),
    "kernel_soft": ("soft kernel: smooth edges, blotchy noise", {"kernel": "soft"}, LUNG_WINDOW),
    "kernel_very_sharp": (
        "very sharp kernel: edge overshoot, fine-grained noise",
        {"kernel": "very_sharp", "noise_hu": 45.0},
        LUNG_WINDOW,
    ),
    "thin_0.625mm": ("0.625 mm slices: vessels as sharp dots", {"slice_thickness_mm": 0.625}, LUNG_WINDOW),
    "thick_5mm": (
        "5 mm slices: partial volume blurs vessels and small nodules",
        {"slice_thickness_mm": 5.0},
        LUNG_WINDOW,
    ),
    "cropped_fov": (
        "0.55 mm pixels, field shifted 70 mm: one side of the chest cut off",
        {"pixel_mm": 0.55, "fov_shift_mm": (70.0, 0.0)},
        LUNG_WINDOW,
    ),
    "matrix_384x512": ("rectangular 384 x 512 crop at 0.9 mm", {"pixel_mm": 0.9, "matrix": (384, 512)}, LUNG_WINDOW),
    "stored_RAS": ("stored RAS: the same slice mirrored in the file", {"orientation": "RAS"}, LUNG_WINDOW),
}
ZOOM = {"kernel_soft", "kernel_very_sharp", "thin_0.625mm", "thick_5mm"}


def edge_letters(affine: np.ndarray) -> dict[str, str]:
    """Patient direction at each screen edge when voxel axis 0 runs right and axis 1 runs down."""
    x_code, y_code, _ = nib.aff2axcodes(affine)
    return {"right": x_code, "left": OPPOSITE[x_code], "bottom": y_code, "top": OPPOSITE[y_code]}


def draw(hu_slice: np.ndarray, affine: np.ndarray, caption: str, window: tuple[float, float], path: Path) -> int:
    """One picture with orientation letters and the caption; returns the file size in bytes."""
    figure = Figure(figsize=(3.2, 3.45), dpi=80)
    axes = figure.add_axes((0.06, 0.03, 0.88, 0.8))
    axes.imshow(hu_slice.T, cmap="gray", vmin=window[0], vmax=window[1], interpolation="antialiased")
    axes.set_xticks([])
    axes.set_yticks([])
    letters = edge_letters(affine)
    style = {"color": "yellow", "fontsize": 11, "fontweight": "bold"}
    axes.text(0.5, 0.99, letters["top"], transform=axes.transAxes, ha="center", va="top", **style)
    axes.text(0.5, 0.01, letters["bottom"], transform=axes.transAxes, ha="center", va="bottom", **style)
    axes.text(0.01, 0.5, letters["left"], transform=axes.transAxes, ha="left", va="center", **style)
    axes.text(0.99, 0.5, letters["right"], transform=axes.transAxes, ha="right", va="center", **style)
    figure.text(0.5, 0.99, caption, ha="center", va="top", fontsize=7.5, wrap=True)
    figure.savefig(path, format="png", pil_kwargs={"optimize": True})
    return path.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--case", type=int, default=1)
    args = parser.parse_args()
    pictures = args.out / "acquisition"
    pictures.mkdir(parents=True, exist_ok=True)

    # Find the slice height of the first tumour: a slab at mid-height tells the phantom's height
    # (world z of the slab = (slab_centre - 0.5) * height with the world origin at mid-height).
    probe = synthesize_case(args.case, args.seed, "full", acquisition=replace(REFERENCE, slab_centre=0.75))
    height = float(probe.affine[2, 3]) / 0.25
    lesions = sorted(probe.tumours + probe.tumours_not_acquired, key=lambda t: -t["diameter_mm"])
    centre = 0.5 + lesions[0]["painted_centre_mm"][2] / height if lesions else 0.6
    rows = []
    for name, (caption, change, window) in SETTINGS.items():
        started = time.perf_counter()
        acquisition = replace(REFERENCE, slab_centre=round(centre, 4), **change)
        case = synthesize_case(args.case, args.seed, "full", acquisition=acquisition)
        hu = case.image.astype(np.float32) if case.rescale is None else case.image * case.rescale[0] + case.rescale[1]
        slice_hu = hu[:, :, 0]
        if name in ZOOM and case.tumours:  # 200 x 200 pixels around the tumour, so that texture shows
            largest = max(case.tumours, key=lambda t: t["diameter_mm"])
            tumour_xy = largest["centre_voxel"][:2]
            i, j = (int(np.clip(round(c) - 100, 0, n - 200)) for c, n in zip(tumour_xy, slice_hu.shape, strict=True))
            slice_hu = slice_hu[i : i + 200, j : j + 200]
            caption += " (zoom on the tumour)"
        size = draw(slice_hu, case.affine, caption, window, pictures / f"{name}.png")
        rows.append((name, caption, acquisition, size))
        print(f"{name}: {size / 1000:.0f} kB, {time.perf_counter() - started:.1f} s")

    lines = [
        "# Synthetic acquisitions",
        "",
        "One synthetic patient (`synthesize_case("
        f'{args.case}, seed={args.seed}, size="full")`), one axial slice through its largest tumour, acquired',
        "with one setting changed at a time from the reference protocol (`lung_tumor.data.acquisition`).",
        "Each picture shows the stored array as it lies in the file (first voxel axis to the right, second",
        "down); the yellow letters give the patient direction at each edge, read from the affine.",
        "`lung-tumor synth --acquisition varied` draws all of these settings per case from the seed",
        "and records them in `synth_truth.json`. Remade by `python scripts/acquisition_gallery.py`.",
        "",
        "| setting | picture |",
        "|---|---|",
    ]
    for name, caption, _, _ in rows:
        lines.append(f"| **{name}**: {caption} | ![{name}](acquisition/{name}.png) |")
    lines += [
        "",
        "What is drawn per case by `--acquisition varied` (`draw_acquisition`):",
        "",
        "| parameter | values (size `full`; `small` uses 4x the pixel and a quarter the matrix) |",
        "|---|---|",
        "| pixel spacing | 0.5-1.0 mm |",
        "| matrix | 512 x 512 (1/3), 384 x 384, 768 x 768, 512 x 384, 448 x 512 |",
        "| slice thickness | 0.625, 1, 1.25, 2, 2.5, 3, 5 mm; spacing equal, or 0.8 / 0.5 of thin ones (overlap) |",
        "| kernel | soft, standard, sharp, very sharp (noise texture and edge overshoot) |",
        "| noise | 8-20 HU times a kernel factor (0.6-3) times sqrt(2 mm / thickness), within 4-90 HU |",
        "| scan circle padding | none, -1024, -2048, 0 |",
        "| field of view | centred on the body (+-10 mm), or in 3 of 10 shifted 40-90 mm sideways (cut) |",
        "| coverage | whole phantom, or in 1 of 5 a slab of 3-12 slices |",
        "| orientation | LPS, RAS, LAS, RPS, LPI, RAI |",
        "| storage | int16 HU; int16 with intercept -1024; uint16 with intercept -1024 (-2048 under -2048 padding) |",
    ]
    (args.out / "synthetic_acquisition.md").write_text("\n".join(lines) + "\n")
    total = sum(size for *_, size in rows)
    print(f"{len(rows)} pictures, {total / 1000:.0f} kB in all")


if __name__ == "__main__":
    main()

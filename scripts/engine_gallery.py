"""Picture gallery of the varied synthetic engine for ``docs/synthetic_engine.md``.

Generates full-size varied cases (seed 0, then case 1, 2, ...) until it has shown every tumour kind and
every finding, and writes one axial crop of each (lung window, tumour labels outlined in red; findings
have no label) and a coronal view with the liver dome and a thick-slab maximum intensity projection of
the vessel trees. Only synthetic data: nothing here reads a real scan.

Usage::

    python scripts/engine_gallery.py [--out docs/engine] [--size full] [--max-cases 20]
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
from matplotlib import pyplot as plt
from scipy import ndimage

from lung_tumor.data.synth import SyntheticCase, synthesize_case
from lung_tumor.data.tumour_model import TUMOUR_KINDS
from lung_tumor.data.variety import FINDINGS, TISSUE_CODES

log = logging.getLogger("engine_gallery")
WINDOW = (-1350.0, 150.0)  # lung window W1500/L-600
PICTURE_PX = 240


def _grey(hu: np.ndarray) -> np.ndarray:
    lo, hi = WINDOW
    return np.clip((hu.astype(np.float32) - lo) / (hi - lo), 0, 1)


def _rgb(hu: np.ndarray, outline: np.ndarray | None = None) -> np.ndarray:
    """Axial crop (X, Y) as an RGB picture with the patient's anterior up and right on the left."""
    grey = _grey(hu).T  # rows: posterior axis, columns: patient left
    rgb = np.repeat(grey[..., None], 3, axis=2)
    if outline is not None:
        edge = (outline & ~ndimage.binary_erosion(outline)).T
        rgb[edge] = (1.0, 0.15, 0.1)
    return rgb


def _save(rgb: np.ndarray, path: Path) -> None:
    scale = max(1, int(PICTURE_PX // max(rgb.shape[:2])))
    rgb = np.kron(rgb, np.ones((scale, scale, 1)))
    plt.imsave(path, rgb)
    log.info("wrote %s (%d kB)", path, path.stat().st_size // 1024)


def _axial_crop(case: SyntheticCase, centre: list[float], size_mm: float, outline: np.ndarray | None) -> np.ndarray:
    px = case.spacing[0]
    half = int(np.ceil(max(size_mm * 2.0, 50.0) / 2 / px))
    x, y, z = (int(round(c)) for c in centre)
    xs = slice(max(x - half, 0), x + half + 1)
    ys = slice(max(y - half, 0), y + half + 1)
    return _rgb(case.image[xs, ys, z], None if outline is None else outline[xs, ys, z])


def _dome_rise(case: SyntheticCase) -> tuple[int, float]:
    """The coronal plane where the right dome rises highest, and how far (mm) above the lowest right lung."""
    right = (case.image[: case.image.shape[0] // 2] > -950) & (case.image[: case.image.shape[0] // 2] < -600)
    best = (0, -1.0)
    for y in range(0, right.shape[1], 4):
        plane = right[:, y, :]  # index 0 is the patient's right
        columns = plane.sum(axis=1) > 0.3 * plane.shape[1]  # columns through the height of the lung
        if columns.sum() < 10:
            continue
        lowest = np.argmax(plane[columns], axis=1)
        # the middle of the lung's floor (the dome) above its lowest point (the costophrenic angle)
        rise = float((np.median(lowest) - lowest.min()) * case.spacing[2])
        best = max(best, (y, rise), key=lambda item: item[1])
    return best


def _coronal(case: SyntheticCase, y: int, path: Path) -> None:
    """Coronal slice through the right dome and a 20 mm slab MIP of the vessel trees beside it."""
    px, _, dz = case.spacing
    slab = max(1, int(10 / px))
    plane = case.image[:, y, :]
    vessels = np.where(case.tissue == TISSUE_CODES["vessel"], case.image, -1000)[:, y - slab : y + slab].max(axis=1)
    mip = np.where(vessels > -1000, vessels, plane)
    pictures = []
    for view in (plane, mip):
        view = ndimage.zoom(view.astype(np.float32), (1, dz / px), order=1)
        pictures.append(_grey(view).T[::-1])  # rows: superior first; columns: patient right to left
    both = np.concatenate([pictures[0], np.ones((pictures[0].shape[0], 4)), pictures[1]], axis=1)
    step = max(1, int(np.ceil(both.shape[1] / 900)))
    plt.imsave(path, both[::step, ::step], cmap="gray", vmin=0, vmax=1)
    log.info("wrote %s (%d kB)", path, path.stat().st_size // 1024)


def make_gallery(out: Path, size: str = "full", max_cases: int = 20) -> dict[str, str]:
    """Write the gallery pictures to ``out``; returns {item: caption}."""
    out.mkdir(parents=True, exist_ok=True)
    wanted = {f"tumour_{k}" for k in TUMOUR_KINDS} | {f"finding_{f}" for f in FINDINGS} | {"coronal"}
    captions: dict[str, str] = {}
    best_rise = -1.0
    for index in range(1, max_cases + 1):
        started = time.perf_counter()
        case = synthesize_case(index, seed=0, size=size, variety="varied")
        log.info("case %d: %.1f s", index, time.perf_counter() - started)
        where = f"{case.case_id}, seed 0, {size}, {case.spacing[0]:.2f} mm pixels, {case.spacing[2]:.2f} mm slices"
        for tumour in case.tumours:
            item = f"tumour_{tumour['kind']}"
            if item in captions or not 12 <= tumour["diameter_mm"] <= 70:  # big enough to show its kind
                continue
            _save(_axial_crop(case, tumour["centre_voxel"], tumour["diameter_mm"], case.label > 0), out / f"{item}.png")
            captions[item] = f"{tumour['kind']}, {tumour['location']}, {tumour['diameter_mm']:.0f} mm ({where})"
        for finding in case.findings:
            item = f"finding_{finding['kind']}"
            if item in captions:
                continue
            mask = case.tissue == TISSUE_CODES[finding["kind"]]
            if "centre_voxel" in finding:  # its slice of largest area, near the recorded centre
                size_mm = finding["size_mm"]
                reach = np.ceil(size_mm / np.array(case.spacing)).astype(int)
                lo = np.maximum(np.round(finding["centre_voxel"]).astype(int) - reach, 0)
                near = np.zeros_like(mask)
                near[tuple(slice(a, a + 2 * r + 1) for a, r in zip(lo, reach, strict=True))] = True
                mask &= near
            else:  # lung-wide findings
                size_mm = 120.0
            z = int(np.argmax(mask.sum(axis=(0, 1))))
            xs, ys = np.nonzero(mask[:, :, z])
            centre = [xs.mean(), ys.mean(), z]
            _save(_axial_crop(case, centre, size_mm, None), out / f"{item}.png")
            captions[item] = f"{finding['kind'].replace('_', '-')} ({where})"
        y, rise = _dome_rise(case)
        if rise > best_rise:  # the case whose liver dome rises highest into the lung so far
            best_rise = rise
            _coronal(case, y, out / "coronal.png")
            captions["coronal"] = f"coronal slice and 20 mm vessel MIP, dome rising {rise:.0f} mm ({where})"
        if wanted <= set(captions) and rise >= 50:
            break
    missing = sorted(wanted - set(captions))
    if missing:
        log.warning("not shown within %d cases: %s", max_cases, missing)
    return captions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/engine"))
    parser.add_argument("--size", choices=("small", "full"), default="full")
    parser.add_argument("--max-cases", type=int, default=20)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for item, caption in make_gallery(args.out, args.size, args.max_cases).items():
        log.info("%s: %s", item, caption)


if __name__ == "__main__":
    main()

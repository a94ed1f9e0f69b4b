"""Compare the HU of synthetic CT with the real chest CTs in ``../shared/real_ct``, tissue by tissue.

Both sides are split by the same HU and morphology rules, slice by slice (nothing from the generator's
own masks), so that the comparison measures the pictures and not the painter:

- padding: the constant value outside the scan circle (voxels equal to the corner value, when it is
  constant over the four corners and below -1000 HU or exactly 0);
- air: outside the body (the largest connected region above -500 HU, holes filled), not padding, in
  slices where the body lies wholly inside the image;
- lung: inside the lung hull (lung regions below -500 HU inside the body, holes filled) at or below
  -500 HU; vessel: inside the lung hull above -300 HU and not tumour;
- soft tissue: inside the body, at least 10 mm below the skin, outside the lung hull, -250..250 HU
  (fat, muscle, blood, organs; no gas, no bone);
- tumour: the label (synthetic) or the LIDC readers' nodule mask (at least 2 of 4 readers).

Prints the percentiles (5, 25, 50, 75, 95) per source and tissue, then what differs between the
synthetic and the real scans. Nothing derived from the real scans is written anywhere.

Usage: python scripts/compare_hu.py [--cases 3] [--size full] [--seed 0] [--acquisitions default varied]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from lung_tumor.data.synth import draw_case_acquisition, synthesize_case

REAL_CT = Path(__file__).resolve().parents[1].parent / "shared" / "real_ct"
TISSUES = ("padding", "air", "lung", "vessel", "soft tissue", "tumour")
PERCENTILES = (5, 25, 50, 75, 95)
MAX_SAMPLES = 400_000  # voxels kept per tissue and source (a fixed-seed subsample), to bound memory


def padding_mask(slice_hu: np.ndarray) -> np.ndarray:
    corners = slice_hu[[0, 0, -1, -1], [0, -1, 0, -1]]
    value = corners[0]
    if not (corners == value).all() or not (value < -1000 or value == 0):
        return np.zeros(slice_hu.shape, bool)
    labels, _ = ndimage.label(slice_hu == value)
    corner_labels = {labels[i, j] for i, j in ((0, 0), (0, -1), (-1, 0), (-1, -1))} - {0}
    return np.isin(labels, list(corner_labels))


def largest_component(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask)
    if not count:
        return mask
    sizes = ndimage.sum_labels(mask, labels, np.arange(1, count + 1))
    return labels == 1 + int(np.argmax(sizes))


def fill_body(body: np.ndarray) -> np.ndarray:
    """Fill the holes of a body outline; where the field of view cuts the body (it covers most of an image
    edge) that edge closes the outline, so that the lungs reaching the cut still count as inside."""
    edges = {"top": body[0], "bottom": body[-1], "left": body[:, 0], "right": body[:, -1]}
    cut = {name: edge.mean() > 0.5 for name, edge in edges.items()}
    padded = np.pad(body, 1)
    padded[0] |= cut["top"]
    padded[-1] |= cut["bottom"]
    padded[:, 0] |= cut["left"]
    padded[:, -1] |= cut["right"]
    return ndimage.binary_fill_holes(padded)[1:-1, 1:-1]


def tissue_masks(slice_hu: np.ndarray, tumour: np.ndarray, pixel_mm: float) -> dict[str, np.ndarray]:
    """The tissues of one axial slice by HU and morphology."""
    padding = padding_mask(slice_hu)
    body = fill_body(largest_component((slice_hu > -500) & ~padding))
    gas = (slice_hu <= -500) & body & ~padding
    labels, count = ndimage.label(gas)
    sizes = ndimage.sum_labels(gas, labels, np.arange(1, count + 1)) * pixel_mm**2
    lung = np.isin(labels, 1 + np.flatnonzero(sizes >= 300.0))  # mm2: lungs, not bowel gas bubbles
    hull = ndimage.binary_fill_holes(lung)
    inner = ndimage.binary_erosion(body, iterations=max(1, round(10.0 / pixel_mm)))
    near_hull = ndimage.binary_dilation(hull, iterations=max(1, round(3.0 / pixel_mm)))
    cut = body[0].any() or body[-1].any() or body[:, 0].any() or body[:, -1].any()
    return {
        "padding": padding,
        "air": ~body & ~padding & ~cut,  # only around a whole body: a crop's "outside" is not air
        "lung": hull & (slice_hu <= -500) & ~tumour,
        "vessel": hull & (slice_hu > -300) & ~tumour,
        "soft tissue": inner & ~near_hull & (slice_hu >= -250) & (slice_hu <= 250) & ~tumour,
        "tumour": tumour,
    }


def collect(hu: np.ndarray, tumour: np.ndarray, pixel_mm: float, step: int = 1) -> dict[str, np.ndarray]:
    """HU samples of each tissue over the axial slices (every ``step``-th slice)."""
    found: dict[str, list[np.ndarray]] = {t: [] for t in TISSUES}
    for k in range(0, hu.shape[2], step):
        masks = tissue_masks(hu[:, :, k], tumour[:, :, k], pixel_mm)
        for name, mask in masks.items():
            found[name].append(hu[:, :, k][mask])
    rng = np.random.default_rng(0)
    samples = {}
    for name, parts in found.items():
        values = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        if len(values) > MAX_SAMPLES:
            values = rng.choice(values, MAX_SAMPLES, replace=False)
        samples[name] = values.astype(np.float32)
    return samples


def real_sources() -> dict[str, dict[str, np.ndarray]]:
    sources = {}
    lidc = REAL_CT / "lidc-idri-0001"
    if (lidc / "ct.nii.gz").is_file():
        image = nib.load(lidc / "ct.nii.gz")
        nodule = np.asarray(nib.load(lidc / "nodule_mask_2readers.nii.gz").dataobj) > 0
        sources["real LIDC-0001 slab"] = collect(image.get_fdata(dtype=np.float32), nodule, image.header.get_zooms()[0])
    thorax = REAL_CT / "thorax-no-tumour" / "ct.nii.gz"
    if thorax.is_file():
        image = nib.load(thorax)
        hu = image.get_fdata(dtype=np.float32)
        sources["real thorax (no tumour)"] = collect(hu, np.zeros(hu.shape, bool), image.header.get_zooms()[0])
    return sources


def synthetic_source(cases: int, size: str, seed: int, preset: str) -> dict[str, np.ndarray]:
    pooled: dict[str, list[np.ndarray]] = {t: [] for t in TISSUES}
    for index in range(1, cases + 1):
        started = time.perf_counter()
        case = synthesize_case(index, seed, size, acquisition=draw_case_acquisition(index, seed, size, preset))
        hu = case.image.astype(np.float32)
        if case.rescale is not None:
            hu = hu * case.rescale[0] + case.rescale[1]
        step = max(1, hu.shape[2] // 40)  # about 40 slices per case
        for name, values in collect(hu, case.label > 0, case.spacing[0], step).items():
            pooled[name].append(values)
        print(f"  synthetic {preset} {case.case_id}: {hu.shape}, {time.perf_counter() - started:.0f} s")
    return {name: np.concatenate(parts) for name, parts in pooled.items()}


def cell(values: np.ndarray) -> str:
    if len(values) < 50:
        return "-"
    return "/".join(f"{v:.0f}" for v in np.percentile(values, PERCENTILES))


def pooled_real(sources: dict[str, dict[str, np.ndarray]], tissue: str) -> np.ndarray:
    parts = [s[tissue] for name, s in sources.items() if name.startswith("real") and len(s[tissue]) >= 50]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=3)
    parser.add_argument("--size", choices=("small", "full"), default="full")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--acquisitions", nargs="+", default=["default", "varied"])
    args = parser.parse_args()

    sources = real_sources()
    if not sources:
        raise SystemExit(f"no real CT found in {REAL_CT}")
    for preset in args.acquisitions:
        sources[f"synthetic {args.size} {preset}"] = synthetic_source(args.cases, args.size, args.seed, preset)

    print(f"\nHU percentiles {'/'.join(str(p) for p in PERCENTILES)} per tissue (- : fewer than 50 voxels)\n")
    print("| tissue | " + " | ".join(sources) + " |")
    print("|---" * (len(sources) + 1) + "|")
    for tissue in TISSUES:
        print(f"| {tissue} | " + " | ".join(cell(s[tissue]) for s in sources.values()) + " |")

    for name, source in sources.items():
        values = np.unique(source["padding"]).astype(int).tolist()
        print(f"padding values in {name}: {values if values else 'none (air to the edge or a crop)'}")

    print("\nWhat differs (synthetic minus pooled real: median shift, and spread as the ratio of 5-95 ranges)\n")
    synthetic = [name for name in sources if name.startswith("synthetic")]
    print("| tissue | " + " | ".join(synthetic) + " |")
    print("|---" * (len(synthetic) + 1) + "|")
    for tissue in TISSUES[1:]:  # the padding differs by design (drawn per scan)
        real = pooled_real(sources, tissue)
        row = []
        for name in synthetic:
            mine = sources[name][tissue]
            if len(real) < 50 or len(mine) < 50:
                row.append("-")
                continue
            shift = float(np.median(mine) - np.median(real))
            spread = np.ptp(np.percentile(mine, [5, 95])) / max(float(np.ptp(np.percentile(real, [5, 95]))), 1.0)
            flag = " **differs**" if abs(shift) > 50 or not 0.6 <= spread <= 1.6 else ""
            row.append(f"{shift:+.0f} HU, spread x{spread:.2f}{flag}")
        print(f"| {tissue} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()

"""Benchmark the preprocessing and the slice cache on a full-size synthetic CT (512 x 512 x 300).

Prints, per volume: seconds and peak memory of `lung-tumor preprocess` (our chain + cache write),
of decoding the .nii.gz files alone, and of the plain MONAI chain (LoadImaged, EnsureChannelFirstd,
Orientationd, Spacingd, ScaleIntensityRanged, ResizeWithPadOrCropd) without caching; then random
slices read per second from the cache against reloading the volume for each slice.
Each measurement runs in a fresh process so that its peak memory (ru_maxrss above the process's
memory after imports) is its own; times are of a second run in that process (the first pays
one-off imports and allocations, as only the first volume of a long run does).

Usage: python scripts/bench_preprocess.py [--work /tmp/lung_tumor_bench] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SHAPE = (512, 512, 300)
PIXEL_MM, IMAGE_SIZE = 1.5, 256


def rss_mb() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def write_volume(root: Path) -> None:
    """A full-size synthetic case stretched to exactly 300 slices, in the MSD layout."""
    import nibabel as nib

    from lung_tumor.data.msd import write_dataset_json
    from lung_tumor.data.synth import synthesize_case

    case = synthesize_case(1, seed=0, size="full", with_tumour=True)
    index = np.linspace(0, case.image.shape[2] - 1, SHAPE[2]).round().astype(int)
    affine = case.affine.copy()
    affine[:3, 2] *= (case.image.shape[2] - 1) / (SHAPE[2] - 1)
    for folder, array in (("imagesTr", case.image[..., index]), ("labelsTr", case.label[..., index])):
        (root / folder).mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(np.ascontiguousarray(array), affine), root / folder / "lung_001.nii.gz")
    write_dataset_json(root, ["lung_001"], [])


def measure(kind: str, root: Path) -> dict[str, float]:
    """Run one measurement in this process; returns seconds and peak MB above the post-import baseline."""
    import nibabel as nib
    import torch

    from lung_tumor.cache import SliceCache
    from lung_tumor.config import PreprocessConfig
    from lung_tumor.data.msd import list_cases
    from lung_tumor.preprocess import case_key, preprocess_case

    torch.set_num_threads(2)
    case = list_cases(root)[0]
    cfg = PreprocessConfig(pixel_mm=PIXEL_MM, image_size=IMAGE_SIZE, num_workers=0)
    if kind == "monai":
        from monai.transforms import (
            Compose,
            EnsureChannelFirstd,
            LoadImaged,
            Orientationd,
            ResizeWithPadOrCropd,
            ScaleIntensityRanged,
            Spacingd,
        )

        plain = Compose(
            [
                LoadImaged(["image", "label"]),
                EnsureChannelFirstd(["image", "label"]),
                Orientationd(["image", "label"], axcodes="RAS"),
                Spacingd(["image", "label"], pixdim=(PIXEL_MM, PIXEL_MM, -1), mode=("bilinear", "nearest")),
                ScaleIntensityRanged("image", a_min=-1350, a_max=150, b_min=0, b_max=1, clip=True),
                ResizeWithPadOrCropd(["image", "label"], (IMAGE_SIZE, IMAGE_SIZE, -1)),
            ]
        )

    def decode() -> None:
        for path in (case.image, case.label):
            np.asanyarray(nib.load(path).dataobj)

    def decode_isal() -> None:
        from lung_tumor.nifti_gzip import read_voxels

        for path in (case.image, case.label):
            read_voxels(nib.load(path), path)

    def ours() -> None:
        preprocess_case(case, cfg, root / "cache" / "cases" / case.case_id, case_key(case, cfg))

    def monai_chain() -> None:
        plain({"image": str(case.image), "label": str(case.label)})

    baseline = rss_mb()
    result: dict[str, float] = {}
    if kind in ("decode", "decode_isal", "ours", "monai"):
        action = {"decode": decode, "decode_isal": decode_isal, "ours": ours, "monai": monai_chain}[kind]
        action()  # warm-up: first-call imports and allocations, as in any long run after its first volume
        start = time.perf_counter()
        action()
    elif kind == "cache_reads":
        from lung_tumor.preprocess import write_index

        write_index(root / "cache", cfg, [json.loads((root / "cache/cases/lung_001/meta.json").read_text())])
        cache = SliceCache(root / "cache")
        rng = np.random.default_rng(0)
        depth = cache.image("lung_001").shape[0]
        reads = 20000
        start = time.perf_counter()
        for z in rng.integers(0, depth, reads):
            cache.slice_stack("lung_001", int(z))
        result["slices_per_s"] = reads / (time.perf_counter() - start)
    elif kind == "volume_reads":
        rng = np.random.default_rng(0)
        reads = 3
        start = time.perf_counter()
        for z in rng.integers(0, SHAPE[2], reads):
            np.asarray(nib.load(case.image).dataobj[..., int(z)], dtype=np.float32)
        result["slices_per_s"] = reads / (time.perf_counter() - start)
    result["seconds"] = time.perf_counter() - start
    result["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - baseline
    return result


def run_child(kind: str, root: Path) -> dict[str, float]:
    output = subprocess.run(
        [sys.executable, __file__, "--measure", kind, "--work", str(root)], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/lung_tumor_bench"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.work)))
        return
    if not (args.work / "dataset.json").is_file():
        write_volume(args.work)
    float32_mb = np.prod(SHAPE) * 4 / 2**20
    rows = {}
    for kind in ("decode", "decode_isal", "ours", "monai"):
        runs = [run_child(kind, args.work) for _ in range(args.repeats)]
        rows[kind] = {
            "seconds": float(np.median([r["seconds"] for r in runs])),
            "peak_mb": float(np.max([r["peak_mb"] for r in runs])),
        }
    cache_reads = run_child("cache_reads", args.work)["slices_per_s"]
    volume_reads = run_child("volume_reads", args.work)["slices_per_s"]
    decode = rows["decode"]["seconds"]
    print(f"volume {SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]} int16 (float32 size {float32_mb:.0f} MB), image + label")
    print(
        f"| step | seconds (median of {args.repeats}) | x decode (nibabel) | x decode (ISA-L) | peak MB above start "
        "| x float32 size |"
    )
    print("|---|---|---|---|---|---|")
    names = {
        "decode": "decode .nii.gz only (nibabel)",
        "decode_isal": "decode .nii.gz only (nibabel's header, ISA-L's gzip: as `load_volume`)",
        "ours": "lung-tumor preprocess (per case, cache written)",
        "monai": "plain MONAI chain, Spacingd, no cache",
    }
    for kind, row in rows.items():
        print(
            f"| {names[kind]} | {row['seconds']:.2f} | {row['seconds'] / decode:.2f} | "
            f"{row['seconds'] / rows['decode_isal']['seconds']:.2f} | "
            f"{row['peak_mb']:.0f} | {row['peak_mb'] / float32_mb:.2f} |"
        )
    print(f"random slices from the cache: {cache_reads:,.0f} slices/s (one core)")
    print(f"random slices by reloading the volume: {volume_reads:.2f} slices/s")


if __name__ == "__main__":
    main()

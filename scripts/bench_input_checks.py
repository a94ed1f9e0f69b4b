"""Benchmark the shared input checks (``lung_tumor.data.checks``) against decoding the volume they check.

Writes the full-size synthetic case of ``bench_preprocess.py`` (512 x 512 x 300, int16, .nii.gz) once,
then times, median of ``--repeats``: decoding it as ``load_volume`` does (MONAI's ``NibabelReader``, its voxels
inflated by ISA-L), the checks ``load_volume`` adds (header, affine, intensities), and the same checks on a
float32 copy (what a NIfTI with a scaling slope decodes to).

Usage: python scripts/bench_input_checks.py [--work /tmp/lung_tumor_bench] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def median_seconds(function: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/lung_tumor_bench"))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from bench_preprocess import write_volume

    from lung_tumor.data import checks
    from lung_tumor.transforms.pipeline import IsalNibabelReader

    path = args.work / "imagesTr" / "lung_001.nii.gz"
    if not path.is_file():
        write_volume(args.work)
    reader = IsalNibabelReader()
    stored = reader.read(str(path))
    array, meta = reader.get_data(stored)
    array = np.asarray(array)

    def decode() -> None:
        reader.get_data(reader.read(str(path)))

    def check(volume: np.ndarray) -> None:
        checks.check_nifti_geometry(path, type(stored.header))
        checks.check_affine(meta["affine"], path)
        checks.check_ct_intensities(volume, path)

    as_float = array.astype(np.float32)
    decoding = median_seconds(decode, args.repeats)
    print(f"{path}: {array.shape} {array.dtype}, {path.stat().st_size / 1e6:.0f} MB")
    print(f"decode            {decoding * 1000:8.0f} ms")
    for name, volume in (("int16", array), ("float32", as_float)):
        seconds = median_seconds(lambda v=volume: check(v), args.repeats)
        print(f"checks ({name:7s}) {seconds * 1000:8.1f} ms  ({seconds / decoding:.1%} of decode)")


if __name__ == "__main__":
    main()

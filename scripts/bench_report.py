"""Benchmark the tumour report on a full-size synthetic CT (512 x 512 x 300, 3 lesions): before and after.

"Before" is ``lung_tumor/report.py`` as of ``--old-ref`` (default 93c446a, the slice-by-slice lung mask),
read with ``git show`` and run beside the current one on the same arrays in this process; "after" is the
current ``tumour_report``, which finds the lungs once (``lung_tumor.thorax.thorax_masks``) and refines
them around each lesion. Prints the median and spread of ``--repeats`` runs of each, the lungs alone, the
load average (the figures scale with it on a shared machine) and whether both reports agree.

Usage: python scripts/bench_report.py [--work /tmp/lung_tumor_bench_report] [--repeats 3]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SHAPE = (512, 512, 300)
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def full_case(work: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Synthetic case 3 (seed 0: a pleural, a mediastinal and a pleural tumour) stretched to 300 slices."""
    cached = work / "lung_003_300.npz"
    if not cached.is_file():
        from lung_tumor.data.synth import synthesize_case

        case = synthesize_case(3, seed=0, size="full", with_tumour=True)
        index = np.linspace(0, case.image.shape[2] - 1, SHAPE[2]).round().astype(int)
        affine = case.affine.copy()
        affine[:3, 2] *= (case.image.shape[2] - 1) / (SHAPE[2] - 1)
        work.mkdir(parents=True, exist_ok=True)
        np.savez(cached, image=case.image[..., index], label=case.label[..., index], affine=affine)
    data = np.load(cached)
    return np.ascontiguousarray(data["image"]), np.ascontiguousarray(data["label"]), data["affine"]


def old_report_module(ref: str, work: Path):  # noqa: ANN201 (a module)
    source = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{ref}:lung_tumor/report.py"], capture_output=True, text=True, check=True
    ).stdout
    path = work / f"report_{ref}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"report_{ref}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def timed(function, repeats: int) -> tuple[list[float], object]:  # noqa: ANN001
    seconds, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        seconds.append(time.perf_counter() - start)
    return seconds, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/lung_tumor_bench_report"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--old-ref", default="93c446a")
    args = parser.parse_args()
    from lung_tumor.report import tumour_report
    from lung_tumor.thorax import thorax_masks

    image, label, affine = full_case(args.work)
    old = old_report_module(args.old_ref, args.work)
    label_f, image_f = np.asfortranarray(label), np.asfortranarray(image)
    print(f"tumour report on a {'x'.join(map(str, image.shape))} int16 CT, {label.max()} label, 3 lesions")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    print("| what | median s | min-max s |")
    print("|---|---|---|")
    runs = {
        f"report before ({args.old_ref})": lambda: old.tumour_report(label, affine, image),
        "report now": lambda: tumour_report(label, affine, image),
        "lungs alone now (thorax_masks)": lambda: thorax_masks(image, affine),
        "report now, CT and mask in file order (as predict reads them)": lambda: tumour_report(
            label_f, affine, image_f
        ),
    }
    reports = {}
    for name, function in runs.items():
        seconds, reports[name] = timed(function, args.repeats)
        print(f"| {name} | {statistics.median(seconds):.2f} | {min(seconds):.2f}-{max(seconds):.2f} |")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    before, now = (reports[name] for name in list(runs)[:2])
    # the report grew fields and measures diameters edge to edge since 93c446a: compare what both define alike
    shared = ("volume_ml", "centroid_voxel", "side", "touches_chest_wall", "touches_mediastinum")
    same = [{k: a[k] for k in shared} for a in before["lesions"]] == [{k: b[k] for k in shared} for b in now["lesions"]]
    flags = [(lesion["touches_chest_wall"], lesion["touches_mediastinum"]) for lesion in now["lesions"]]
    print(
        f"lesions agree before and now on {', '.join(shared)}: {same}; "
        f"midline before {before['midline_x_mm']:.6f} mm, "
        f"now {now['midline_x_mm']:.6f} mm; (chest wall, mediastinum) per lesion: {flags}"
    )


if __name__ == "__main__":
    main()

"""Benchmark the tumour report as `lung-tumor predict` writes it (JSON, text, HTML page): before and after.

The case is a full-size synthetic CT (512 x 512 x 300: case 3 of seed 0, three lesions, stretched to 300 slices)
with its label as the prediction, or ``--mask`` (a predicted mask of that CT, e.g. from ``lung-tumor predict``)
instead. The arrays are handed over as ``predict`` holds them: int16 CT and uint8 mask in the file's memory order
(first axis fastest), a float32 probability map. Each step is what ``predict`` runs after writing the mask:
``tumour_report`` (the lungs found there, as without ``--lung-mask``), ``write_report`` (JSON and text) and
``write_report_html``, after ``lung_tumor.inference`` is imported (as in ``predict``).

"Before" is the package ``lung_tumor/`` at ``--before`` (a git revision, extracted with ``git archive``), "now" the
working tree; each run is its own process, the two interleaved ``--repeats`` times (a change of load on a shared
machine touches both alike). Printed: median and range of each step, the CPU time of the whole report path (the
process's, all threads: the core time the report needs, which other jobs' load inflates far less than the wall
clock; for this single-threaded numpy and scipy code, about the wall clock of an idle machine), the peak of the
memory the report path allocates (tracemalloc, above what the process holds before it: the CT, mask and
probabilities), the load average, and whether both write the same reports (JSON and text identical, the HTML page
identical but for the PNG bytes, its pictures pixel for pixel).

Usage: python scripts/bench_report.py [--before 016e825] [--repeats 3] [--mask PRED.nii.gz] [--work DIR]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SHAPE = (512, 512, 300)
REPO = Path(__file__).resolve().parents[1]
STEPS = ("tumour_report", "write_report", "write_report_html")


def full_case(work: Path) -> Path:
    """Synthetic case 3 (seed 0: a pleural, a mediastinal and a pleural tumour) stretched to 300 slices."""
    cached = work / "lung_003_300.npz"
    if not cached.is_file():
        sys.path.insert(0, str(REPO))
        from lung_tumor.data.synth import synthesize_case

        case = synthesize_case(3, seed=0, size="full", with_tumour=True)
        index = np.linspace(0, case.image.shape[2] - 1, SHAPE[2]).round().astype(int)
        affine = case.affine.copy()
        affine[:3, 2] *= (case.image.shape[2] - 1) / (SHAPE[2] - 1)
        work.mkdir(parents=True, exist_ok=True)
        np.savez(cached, image=case.image[..., index], label=case.label[..., index], affine=affine)
    return cached


def child(tree: Path, case: Path, mask_path: Path | None, out: Path) -> None:
    """One process: time the report steps of the package in ``tree`` once, then trace their memory once."""
    import tracemalloc

    sys.path.insert(0, str(tree))
    import lung_tumor.inference  # noqa: F401  (predict has imported it: torch, MONAI, matplotlib, scipy)
    import lung_tumor.report as report
    import lung_tumor.report_html as report_html
    from lung_tumor.outputs import marker

    data = np.load(case)
    image = np.asfortranarray(data["image"])
    affine = data["affine"]
    if mask_path is None:
        mask = np.asfortranarray(data["label"], dtype=np.uint8)
    else:
        import nibabel as nib

        mask = np.asfortranarray(np.asarray(nib.load(mask_path).dataobj), dtype=np.uint8)
    probability = np.asfortranarray(mask, dtype=np.float32)
    probability *= 0.9
    out.mkdir(parents=True, exist_ok=True)

    def run() -> tuple[list[float], float]:
        times, cpu = [time.perf_counter()], time.process_time()
        spread = {
            "generator": marker("predict"),
            **report.tumour_report(mask, affine, image, probability=probability),
            "provenance": None,
            "source": "lung_003_300",
        }
        times.append(time.perf_counter())
        report.write_report(spread, out / "case_report.json", out / "case_report.txt")
        times.append(time.perf_counter())
        report_html.write_report_html(spread, mask, image, affine, out / "case_report.html", "case")
        times.append(time.perf_counter())
        return list(np.diff(times)), time.process_time() - cpu

    seconds, cpu_seconds = run()
    tracemalloc.start()
    run()
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu_seconds, "peak_mb": peak}))


def pictures(page: str) -> list[np.ndarray]:
    from PIL import Image

    found = []
    for data in re.findall(r"data:image/png;base64,([^\"]+)\"", page):
        with Image.open(io.BytesIO(base64.b64decode(data))) as picture:
            found.append(np.asarray(picture))
    return found


def same_reports(a: Path, b: Path) -> str:
    json_same = json.loads((a / "case_report.json").read_text()) == json.loads((b / "case_report.json").read_text())
    text_same = (a / "case_report.txt").read_text() == (b / "case_report.txt").read_text()
    page_a, page_b = ((d / "case_report.html").read_text() for d in (a, b))

    def strip(page: str) -> str:
        return re.sub(r"data:image/png;base64,[^\"]+", "", page)

    shown_a, shown_b = pictures(page_a), pictures(page_b)
    same_pixels = len(shown_a) == len(shown_b) and all(
        np.array_equal(x, y) for x, y in zip(shown_a, shown_b, strict=False)
    )
    return (
        f"JSON identical: {json_same}; text identical: {text_same}; HTML identical but for the PNG bytes: "
        f"{strip(page_a) == strip(page_b)}; {len(shown_a)} picture(s), pixel for pixel identical: {same_pixels}; "
        f"page {len(page_a) / 1024:.0f} KB before, {len(page_b) / 1024:.0f} KB now"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/lung_tumor_bench_report"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--before", default="016e825", help="git revision of the 'before' package")
    parser.add_argument("--mask", type=Path, default=None, help="a predicted mask of the case's CT (NIfTI)")
    parser.add_argument("--child", nargs=2, type=Path, default=None, metavar=("TREE", "OUT"), help="internal")
    args = parser.parse_args()
    case = full_case(args.work)
    if args.child:
        child(args.child[0], case, args.mask, args.child[1])
        return
    before = args.work / f"before_{args.before}"
    if not (before / "lung_tumor").is_dir():
        before.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", args.before, "lung_tumor"], capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(before)], input=archive, check=True)
    trees = {f"before ({args.before})": before, "now": REPO}
    outs = {name: args.work / f"out_{i}" for i, name in enumerate(trees)}
    results: dict[str, list[dict]] = {name: [] for name in trees}
    print(f"case: {case.name}{f', mask {args.mask}' if args.mask else ', its label as the prediction'}")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    for _ in range(args.repeats):
        for name, tree in trees.items():
            command = [sys.executable, __file__, "--work", str(args.work), "--child", str(tree), str(outs[name])]
            if args.mask:
                command += ["--mask", str(args.mask)]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            results[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"\n{args.repeats} processes each, interleaved; seconds: median (min-max)")
    print("| tree | " + " | ".join(STEPS) + " | report path in all | its CPU time | peak MB allocated |")
    print("|---|" + "---|" * (len(STEPS) + 3))
    totals = {}
    for name, runs in results.items():
        cells = []
        for i in range(len(STEPS)):
            values = [run["seconds"][i] for run in runs]
            cells.append(f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})")
        sums = [sum(run["seconds"]) for run in runs]
        totals[name] = statistics.median(sums)
        peak = statistics.median(run["peak_mb"] for run in runs)
        cpu = [run["cpu_seconds"] for run in runs]
        print(
            f"| {name} | {' | '.join(cells)} | {totals[name]:.2f} ({min(sums):.2f}-{max(sums):.2f}) | "
            f"{statistics.median(cpu):.2f} ({min(cpu):.2f}-{max(cpu):.2f}) | {peak:.0f} |"
        )
    first, last = totals.values()
    print(f"\nnow / before: {last / first:.2f}x the time ({first / last:.1f}x faster)")
    print(same_reports(*outs.values()))


if __name__ == "__main__":
    main()

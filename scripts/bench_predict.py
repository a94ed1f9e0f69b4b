"""Benchmark `lung-tumor predict` as users run it: whole commands, a trained run, a scan with tumours.

Every figure is a whole process (Python start, imports, model load, read, preprocess, inference, restore,
write), timed from outside with `/usr/bin/time` (wall seconds and peak resident memory), several times,
interleaved, in one run of this script:

- `python -c "import monai"`: the floor every MONAI command pays;
- `lung-tumor predict` (mask only; mask and report; and with `--precision float32` when the run's default is
  bfloat16);
- a plain MONAI pipeline for the same network and geometry (LoadImaged, EnsureChannelFirstd, Orientationd,
  Spacingd, ScaleIntensityRanged, ResizeWithPadOrCropd, SliceInferer, Activationsd, Invertd, AsDiscreted,
  SaveImaged), run as its own command (`--plain`), on the GPU where there is one, as `predict` is;
- the breakdown of one `lung-tumor -v predict` (its DEBUG timing lines) and the import of `lung_tumor.inference`;
- a folder of N scans in one command against N separate commands: scans per minute.

The scan is a full-size synthetic case with tumours (512 x 512 x 300, written by `bench_preprocess.py`'s
`write_volume`). The run must be trained (`lung-tumor demo` makes `runs/demo/runs/unet2d/fold_0`): with random
weights the mask is empty and the report has nothing to measure. The load average is printed beside the
figures: on a shared machine they are only indications.

Usage: python scripts/bench_predict.py --run runs/demo/runs/unet2d/fold_0 [--repeats 3] [--folder-scans 4]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_preprocess import SHAPE, write_volume  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TIMER = "/usr/bin/time"
STEPS = ("model loaded", "read", "preprocess", "inference", "restore", "write", "report")


def plain_monai(run: Path, image: Path, output: Path) -> None:
    """The textbook MONAI pipeline for the run's network and in-plane geometry (no 2.5D context: the slice repeated)."""
    import torch
    from monai.inferers import SliceInferer
    from monai.transforms import (
        Activationsd,
        AsDiscreted,
        Compose,
        EnsureChannelFirstd,
        Invertd,
        LoadImaged,
        Orientationd,
        ResizeWithPadOrCropd,
        SaveImaged,
        ScaleIntensityRanged,
        Spacingd,
    )

    from lung_tumor.training.run import load_trained_model

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # where `predict` runs too
    network, config = load_trained_model(run, device=device)
    pre = config["preprocess"]
    size = (pre["image_size"], pre["image_size"], -1)
    low, high = pre.get("intensity", {}).get("window", (-1350, 150))
    preprocess = Compose(
        [
            LoadImaged("image"),
            EnsureChannelFirstd("image"),
            Orientationd("image", axcodes="RAS"),
            Spacingd("image", pixdim=(pre["pixel_mm"], pre["pixel_mm"], -1), mode="bilinear"),
            ScaleIntensityRanged("image", a_min=low, a_max=high, b_min=0, b_max=1, clip=True),
            ResizeWithPadOrCropd("image", size),
        ]
    )
    post = Compose(
        [
            Activationsd("pred", sigmoid=True),
            Invertd("pred", transform=preprocess, orig_keys="image", nearest_interp=False),
            AsDiscreted("pred", threshold=0.5),
            SaveImaged(
                "pred", output_dir=str(output), output_postfix="mask", output_dtype="uint8", separate_folder=False
            ),
        ]
    )
    channels = 2 * config.get("context_slices", 0) + 1

    def network_2d(x: torch.Tensor) -> torch.Tensor:
        return network(x.repeat(1, channels, 1, 1))

    data = preprocess({"image": str(image)})
    with torch.no_grad():
        data["pred"] = SliceInferer(roi_size=size[:2], sw_batch_size=32, spatial_dim=2, sw_device=device)(
            data["image"][None], network_2d
        )[0]
    post(data)


def inference_variants(run: Path, image: Path, repeats: int) -> None:
    """Seconds of the network step alone (``Predictor.probabilities``) on the preprocessed scan, per setting."""
    import time

    import torch

    from lung_tumor.inference import Predictor

    predictor = Predictor(run, precision="float32")
    volume = predictor.prepare(image).volume
    variants = {  # name: (precision, slices per batch, channels-last)
        "float32, 32 slices per batch, contiguous (before)": ("float32", 32, False),
        "float32, batch from slice size": ("float32", None, False),
        "float32, batch from slice size, channels-last": ("float32", None, True),
        "bfloat16, 32 slices per batch, contiguous": ("bfloat16", 32, False),
        "bfloat16, batch from slice size, channels-last (now)": ("bfloat16", None, True),
    }
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, (precision, batch, last) in variants.items():
            predictor.precision, predictor.slices_per_batch = precision, batch
            predictor.network.to(memory_format=torch.channels_last if last else torch.contiguous_format)
            predictor.channels_last = last
            start = time.perf_counter()
            predictor.probabilities(volume)
            seconds[name].append(time.perf_counter() - start)
    print(
        f"network step alone, {tuple(volume.shape[1:])} preprocessed, {torch.get_num_threads()} threads, "
        f"median (min-max) of {repeats}; load average {load_average()}"
    )
    print("| setting | seconds |")
    print("|---|---|")
    for name, values in seconds.items():
        print(f"| {name} | {statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f}) |")


def timed(command: list[str], env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """Run a whole command under /usr/bin/time: wall seconds, peak resident MB, and its stderr."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as record:
        process = subprocess.run(
            [TIMER, "-f", "%e %M", "-o", record.name, *command],
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO,
        )
        if process.returncode:
            raise SystemExit(f"failed ({process.returncode}): {' '.join(command)}\n{process.stderr[-2000:]}")
        wall, peak_kb = record.read().split()[-2:]
    return float(wall), float(peak_kb) / 1024, process.stderr


def gpu_name() -> str:
    """The CUDA GPU that `predict` and the plain pipeline run on, or 'none' (asked in a child: no CUDA here)."""
    probe = "import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else 'none')"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip() or "none"


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def mask_stats(path: Path, reference: Path | None = None) -> str:
    import nibabel as nib
    import numpy as np

    mask = np.asarray(nib.load(path).dataobj) > 0
    text = f"{int(mask.sum())} voxels"
    if reference is not None:
        other = np.asarray(nib.load(reference).dataobj) > 0
        total = int(mask.sum() + other.sum())
        text += f", Dice {2 * int((mask & other).sum()) / total:.4f} against {reference.name}" if total else ""
    return text


def breakdown(stderr: str) -> dict[str, float]:
    """Seconds per step from the DEBUG lines of one `lung-tumor -v predict` (a step may appear more than once)."""
    seconds = dict.fromkeys(STEPS, 0.0)
    for step in STEPS:
        for match in re.finditer(rf"{step} (?:in )?([0-9.]+) s", stderr):
            seconds[step] += float(match.group(1))
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=REPO / "runs/demo/runs/unet2d/fold_0", help="a trained run")
    parser.add_argument("--work", type=Path, default=Path("/tmp/lung_tumor_bench"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--folder-scans", type=int, default=4, help="scans in the folder test (0: skip it)")
    parser.add_argument("--variants", action="store_true", help="only time the network step per setting")
    parser.add_argument("--folder-only", action="store_true", help="only the folder test (one command against N)")
    parser.add_argument("--plain", nargs=3, type=Path, default=None, metavar=("RUN", "IMAGE", "OUT"), help="internal")
    args = parser.parse_args()
    if args.plain:
        plain_monai(*args.plain)
        return
    run = args.run.resolve()
    if not (run / "checkpoints").is_dir():
        raise SystemExit(f"{run}: no trained run there (run `lung-tumor demo` first, or pass --run)")
    if not (args.work / "imagesTr" / "lung_001.nii.gz").is_file():
        write_volume(args.work)
    scan = args.work / "imagesTr" / "lung_001.nii.gz"
    if args.variants:
        inference_variants(run, scan, args.repeats)
        return
    out = args.work / "predict_out"
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    python = sys.executable
    predict = [python, "-m", "lung_tumor", "predict", "--run", str(run), "--overwrite"]
    metadata = json.loads((run / "metadata.json").read_text()) if (run / "metadata.json").is_file() else {}
    print(f"run {run} (best validation Dice {metadata.get('best_metric', '?')}), scan {scan.name} {SHAPE}")
    print(f"{os.cpu_count()} CPUs, GPU: {gpu_name()}, load average at start: {load_average()}")

    if args.folder_only:
        folder_test(args, scan, out, predict, env)
        return
    commands = {
        'python -c "import monai"': [python, "-c", "import monai"],
        "lung-tumor predict --no-report (mask)": [
            *predict,
            "--input",
            str(scan),
            "--output",
            str(out / "mask"),
            "--no-report",
        ],
        "lung-tumor predict (mask and report)": [*predict, "--input", str(scan), "--output", str(out / "report")],
        "lung-tumor predict --precision float32 (mask and report)": [
            *predict,
            "--input",
            str(scan),
            "--output",
            str(out / "float32"),
            "--precision",
            "float32",
        ],
        "plain MONAI pipeline (mask)": [python, __file__, "--plain", str(run), str(scan), str(out / "plain")],
    }
    walls: dict[str, list[float]] = {name: [] for name in commands}
    peaks: dict[str, list[float]] = {name: [] for name in commands}
    for repeat in range(args.repeats):  # interleaved, so that a change of load touches every pipeline alike
        for name, command in commands.items():
            wall, peak, _ = timed(command, env)
            walls[name].append(wall)
            peaks[name].append(peak)
            # each run as it ends: a benchmark stopped early (a lent GPU's time runs out) still leaves its figures
            print(f"run {repeat + 1}: {name}: {wall:.2f} s, {peak:.0f} MB", flush=True)
    floor = statistics.median(walls['python -c "import monai"'])
    print(f"\nwhole commands, {args.repeats} runs each, median (min-max); load average now {load_average()}")
    print("| command | wall s | wall s less `import monai` | peak MB |")
    print("|---|---|---|---|")
    for name in commands:
        less = statistics.median(walls[name]) - floor
        print(f"| {name} | {spread(walls[name])} | {less:.1f} | {statistics.median(peaks[name]):.0f} |")
    ours = statistics.median(walls["lung-tumor predict (mask and report)"])
    plain = statistics.median(walls["plain MONAI pipeline (mask)"])
    print(f"plain MONAI / lung-tumor predict (mask and report): {plain / ours:.2f}x")
    mask = out / "report" / "lung_001.nii.gz"
    print(f"mask: {mask_stats(mask)}; float32: {mask_stats(out / 'float32' / 'lung_001.nii.gz', mask)}")
    print(f"plain MONAI mask: {mask_stats(out / 'plain' / 'lung_001_mask.nii.gz', mask)}")
    report = json.loads((out / "report" / "lung_001_report.json").read_text())
    print(f"report: {report['lesion_count']} lesion(s), {report['total_volume_ml']:.1f} ml")

    _, _, stderr = timed(
        [python, "-m", "lung_tumor", "-v", *predict[3:], "--input", str(scan), "--output", str(out / "debug")], env
    )
    importing, _, _ = timed([python, "-c", "import lung_tumor.inference"], env)
    steps = breakdown(stderr)
    print(f"\nbreakdown of one `lung-tumor -v predict` (mask and report); load average {load_average()}")
    print("| step | seconds |")
    print("|---|---|")
    print(f"| python start and `import lung_tumor.inference` (own command) | {importing:.2f} |")
    for step, seconds in steps.items():
        print(f"| {step} | {seconds:.2f} |")

    folder_test(args, scan, out, predict, env)


def folder_test(args: argparse.Namespace, scan: Path, out: Path, predict: list[str], env: dict[str, str]) -> None:
    """A folder of ``--folder-scans`` copies of the scan in one command, against as many separate commands."""
    if args.folder_scans:
        folder = args.work / "folder"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        for index in range(args.folder_scans):  # the same scan under N names: N reads, N segmentations
            os.link(scan, folder / f"lung_{index:03d}.nii.gz")
        at_start = load_average()
        one_command, folder_peak, _ = timed([*predict, "--input", str(folder), "--output", str(out / "folder")], env)
        separate = sum(
            timed([*predict, "--input", str(path), "--output", str(out / "separate")], env)[0]
            for path in sorted(folder.iterdir())
        )
        n = args.folder_scans
        print(f"\n{n} scans (mask and report); load average {at_start} before, {load_average()} after")
        print("| how | wall s | scans per minute | peak MB |")
        print("|---|---|---|---|")
        print(
            f"| one command, `--input folder/` | {one_command:.1f} | {60 * n / one_command:.1f} | {folder_peak:.0f} |"
        )
        print(f"| {n} separate commands | {separate:.1f} | {60 * n / separate:.1f} | |")
        print(f"one command / separate commands: {separate / one_command:.2f}x the scans per minute")


if __name__ == "__main__":
    main()

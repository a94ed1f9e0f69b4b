"""GPU figures: training slices per second with AMP, peak GPU memory, and prediction per scan.

    python scripts/bench_gpu.py                       # on a machine with a CUDA GPU
    python scripts/bench_gpu.py --steps 20 --repeats 3 --json bench_gpu.json

1. **Training step** (forward, the config's loss, backward, Adam step; as MONAI's ``SupervisedTrainer`` does it:
   ``torch.autocast`` and a ``GradScaler`` for float16) of the default network (``configs/train.yaml``: UNet2D
   64..512, 5-channel 2.5D, 256 x 256) in float32, float16 AMP and bfloat16 autocast, at the config's batch of 16
   per GPU and at 64; and of the shipped model's recipe (``configs/pretrained.yaml``: UNet2D 16..128, 96 px
   crops, batch 32). Slices per second (median of ``--steps`` timed steps after warm-up, the GPU synchronised)
   and peak GPU memory (``torch.cuda.max_memory_allocated``).
2. **The network step of prediction**: a 300-slice volume at 256 px through the default network
   (``SliceStackInferer``, 32 slices a batch), float32 and autocast (largest probability difference from
   float32; random weights), median of ``--repeats``.
3. **Whole commands**: ``python -m lung_tumor predict`` with the shipped model on a 512 x 512 x 300 synthetic
   scan with tumours (mask and reports; mask only), and ``python -c "import monai"`` in the same run,
   interleaved: wall seconds and the peak resident memory of each process, median (min-max).

Random inputs are drawn for the step timings (never zeros). Prints a table per part; ``--json`` keeps every
figure. Without a GPU it says so and stops.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_preprocess import write_volume  # noqa: E402
from bench_train import network_for  # noqa: E402

from lung_tumor.config import load_config  # noqa: E402
from lung_tumor.training.losses import build_loss  # noqa: E402
from lung_tumor.training.run import SliceStackInferer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
PRECISIONS = {"float32": None, "float16": torch.float16, "bfloat16": torch.bfloat16}


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synchronised_seconds(function: Any, device: torch.device) -> float:
    """Wall seconds of ``function()`` with the GPU's queued work finished before and after."""
    synchronise(device)
    start = time.perf_counter()
    function()
    synchronise(device)
    return time.perf_counter() - start


def peak_gpu_mb(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def training_rate(config: str, size: int, batch: int, precision: str, steps: int, device: torch.device) -> dict:
    """Slices per second and peak GPU memory of the training step of ``config``'s network at ``size`` px."""
    network, channels = network_for(CONFIGS / config, "unet2d")
    network = network.to(device).train()
    loss_fn = build_loss(load_config(CONFIGS / config).get("loss"))
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-4)
    dtype = PRECISIONS[precision]
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)
    image = torch.rand(batch, channels, size, size, device=device)
    label = (torch.rand(batch, 1, size, size, device=device) > 0.95).float()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = loss_fn(network(image), label)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    for _ in range(3):  # cuDNN's algorithm search and the allocator warm up
        step()
    reset_peak(device)
    seconds = statistics.median(synchronised_seconds(step, device) for _ in range(steps))
    return {
        "config": config,
        "size": size,
        "batch": batch,
        "precision": precision,
        "slices_per_s": batch / seconds,
        "peak_gpu_mb": peak_gpu_mb(device),
        "parameters": sum(p.numel() for p in network.parameters()),
    }


def inference_seconds(precision: str, repeats: int, device: torch.device, depth: int = 300, size: int = 256) -> dict:
    """Seconds for the default network over a ``depth``-slice 256 px volume, as ``predict`` runs it."""
    network, channels = network_for(CONFIGS / "train.yaml", "unet2d")
    network = network.to(device).eval().to(memory_format=torch.channels_last)
    inferer = SliceStackInferer(channels // 2, 32)
    volume = torch.rand(1, 1, depth, size, size, device=device)
    dtype = PRECISIONS[precision]

    def run() -> torch.Tensor:
        autocast = torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)
        with torch.inference_mode(), autocast:
            return torch.sigmoid(inferer(volume, network))

    reference = run()
    reset_peak(device)
    seconds = statistics.median(synchronised_seconds(run, device) for _ in range(repeats))
    return {
        "precision": precision,
        "slices": depth,
        "seconds": seconds,
        "peak_gpu_mb": peak_gpu_mb(device),
        "probabilities": reference.float(),
    }


def timed_command(command: list[str]) -> tuple[float, float]:
    """Wall seconds and peak resident MB of one command, measured by a small parent process of its own."""
    probe = (
        "import resource, subprocess, sys, time; start = time.perf_counter(); "
        "code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode; "
        "wall = time.perf_counter() - start; peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024; "
        "print(wall, peak, code)"
    )
    output = subprocess.run([sys.executable, "-c", probe, *command], capture_output=True, text=True, check=True)
    wall, peak, code = output.stdout.split()
    if int(code) != 0:
        raise RuntimeError(f"exit status {code}: {' '.join(command)}")
    return float(wall), float(peak)


def whole_commands(work: Path, repeats: int) -> list[dict]:
    """``import monai`` and ``predict`` (shipped model) with and without reports, interleaved, as processes."""
    write_volume(work)
    scan = work / "imagesTr" / "lung_001.nii.gz"
    predict = [sys.executable, "-m", "lung_tumor", "predict", "--input", str(scan), "--overwrite"]
    commands = {
        'python -c "import monai"': [sys.executable, "-c", "import monai"],
        "lung-tumor predict (mask and reports)": [*predict, "--output", str(work / "with_reports")],
        "lung-tumor predict --no-report (mask)": [*predict, "--output", str(work / "mask_only"), "--no-report"],
    }
    timings: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    for _ in range(repeats):
        for name, command in commands.items():
            timings[name].append(timed_command(command))
    reports = [json.loads(path.read_text()) for path in (work / "with_reports").glob("*_report.json")]
    rows = []
    for name, values in timings.items():
        walls, peaks = [w for w, _ in values], [p for _, p in values]
        rows.append({"command": name, "wall_s": walls, "median_s": statistics.median(walls), "peak_mb": max(peaks)})
    rows.append({"lesions": [(r["lesion_count"], round(r["total_volume_ml"], 1)) for r in reports]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per setting")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the inference and whole-command timings")
    parser.add_argument("--skip-commands", action="store_true", help="skip the whole-command timings")
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: check the script, no figures")
    args = parser.parse_args()
    if not torch.cuda.is_available() and not args.smoke:
        print("no CUDA GPU here: nothing to measure")
        return
    device = torch.device("cpu" if args.smoke else "cuda")
    shrink = 8 if args.smoke else 1
    torch.backends.cudnn.benchmark = True  # fixed slice sizes: let cuDNN choose its fastest algorithms
    figures: dict[str, Any] = {
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "none (--smoke)",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }
    print(f"{figures['gpu']}, torch {figures['torch']}, CUDA {figures['cuda']}")

    figures["training"] = []
    settings = [("train.yaml", 256, 16, p) for p in PRECISIONS] + [
        ("train.yaml", 256, 64, "float16"),
        ("pretrained.yaml", 96, 32, "float16"),
    ]
    settings = [(config, size // shrink, max(batch // shrink, 2), p) for config, size, batch, p in settings]
    print("\ntraining step | size | batch | precision | slices/s | peak GPU MB")
    for config, size, batch, precision in settings:
        row = training_rate(config, size, batch, precision, args.steps, device)
        figures["training"].append(row)
        print(f"{config} | {size} | {batch} | {precision} | {row['slices_per_s']:.0f} | {row['peak_gpu_mb']:.0f}")

    figures["inference"] = []
    print("\nprediction network step, default network, 300 slices at 256 px | seconds | peak GPU MB | max |p - p32|")
    reference = None
    for precision in PRECISIONS:
        row = inference_seconds(precision, args.repeats, device, depth=300 // shrink, size=256 // shrink)
        probabilities = row.pop("probabilities")
        reference = probabilities if reference is None else reference
        row["max_abs_difference_vs_float32"] = float((probabilities - reference).abs().max())
        figures["inference"].append(row)
        difference = row["max_abs_difference_vs_float32"]
        print(f"{precision} | {row['seconds']:.3f} | {row['peak_gpu_mb']:.0f} | {difference:.2e}")

    if not args.skip_commands:
        with tempfile.TemporaryDirectory() as work:
            figures["commands"] = whole_commands(Path(work), args.repeats)
        print(f"\nwhole commands, 512x512x300 scan, shipped model, median (min-max) of {args.repeats}")
        for row in figures["commands"][:-1]:
            spread = f"{min(row['wall_s']):.2f}-{max(row['wall_s']):.2f}"
            print(f"{row['command']} | {row['median_s']:.2f} ({spread}) s | {row['peak_mb']:.0f} MB")
        print(f"predicted (lesions, ml): {figures['commands'][-1]['lesions']}")
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=1))
    print(f"peak resident memory of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()

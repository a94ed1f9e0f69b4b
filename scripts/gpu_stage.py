"""A training stage on a lent GPU machine in one command and a fixed time: make full-size synthetic cases on every
core, preprocess them, train, and print the training rate.

    python scripts/gpu_stage.py --config configs/pretrained_gpu_fine.yaml --synth-minutes 3.2 --deadline-minutes 8.3

A lent machine gives minutes, not hours, and its 16 cores make full-size cases far faster than a 2-core CPU, but
far slower than a GPU trains on them (a full-size case took about 80 s of one of a lent H200 machine's cores, 35 s
of one of this project's 2). So the cases are made first, for ``--synth-minutes`` (``lung-tumor synth
--max-minutes``: the dataset keeps the cases finished from ``lung_001`` on, as ``--cases K`` would write them),
then preprocessed with a worker per core, and the network trains on them for what is left of
``--deadline-minutes`` (``training.max_minutes``), with the epochs set from ``--slices-per-second`` so that the
cosine schedule ends about then. Each step is skipped when its output is
there already and training resumes from its last checkpoint, so the same line continues an interrupted run.

Prints each step's wall time, the cases and slices made, and the training rate: slices per second over the
training iterations (the time of the validation passes, from the evaluator's log, left out).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lung_tumor.config import load_config  # noqa: E402

EVALUATOR_TIME = re.compile(r"SupervisedEvaluator: Epoch\[\d+\] Complete\. Time taken: (\d+):(\d+):([\d.]+)")


def lung_tumor(arguments: list[str], log: Path, timeout: float | None = None) -> float:
    """Run ``python -m lung_tumor ARGUMENTS`` with its output appended to ``log``; return its wall seconds."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    started = time.monotonic()
    with log.open("a") as out:
        print("$ lung-tumor", " ".join(arguments), flush=True)
        subprocess.run(
            [sys.executable, "-m", "lung_tumor", *arguments],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=True,
            timeout=timeout,
        )
    return time.monotonic() - started


def validation_seconds(log: Path) -> float:
    """The evaluator's time in ``log``: every validation pass's 'Time taken'."""
    return sum(int(h) * 3600 + int(m) * 60 + float(s) for h, m, s in EVALUATOR_TIME.findall(log.read_text()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--seed", type=int, default=6262, help="synth seed of the fixed cases")
    parser.add_argument("--synth-minutes", type=float, default=3.0)
    parser.add_argument("--deadline-minutes", type=float, default=8.3, help="the whole command's time")
    parser.add_argument(
        "--slices-per-second", type=float, default=750.0, help="the expected training rate (751 on an H200)"
    )
    parser.add_argument(
        "--reserve-minutes", type=float, default=1.2, help="kept for training's start-up and shut-down (30-40 s)"
    )
    parser.add_argument("--log", type=Path, default=None, help="the steps' output (default: beside the runs)")
    args = parser.parse_args(argv)

    started = time.monotonic()
    config = load_config(args.config)
    root = Path(config.get("data")["root"])
    run_dir = Path(config.get("output_dir")) / config.get("run_name") / f"fold_{config.get('fold')}"
    training = config.get("training")
    log = args.log or Path(config.get("output_dir")).parent / "gpu_stage.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1
    times: dict[str, float] = {}

    made = not (root / "dataset.json").is_file()
    if made:
        times["synth"] = lung_tumor(
            ["synth", "--out", str(root), "--cases", "2000", "--test-cases", "0", "--size", "full", "--seed",
             str(args.seed), "--variety", "varied", "--acquisition", "varied", "--workers", str(cores),
             "--max-minutes", str(args.synth_minutes)],
            log,
        )  # fmt: skip
    cases = json.loads((root / "dataset.json").read_text())["numTraining"]
    print(
        f"{cases} full-size cases made (seed {args.seed})" if made else f"{cases} cases already",
        f"in {root}",
        flush=True,
    )

    times["preprocess"] = lung_tumor(
        ["preprocess", "--config", str(args.config), "--set", f"preprocess.num_workers={cores}"], log
    )
    slices = sum(1 for _ in (Path(config.get("data")["cache_dir"]) / "slices.csv").open()) - 1
    print(f"{slices} slices preprocessed", flush=True)

    elapsed = (time.monotonic() - started) / 60.0
    minutes = args.deadline_minutes - elapsed - args.reserve_minutes
    if minutes < 1.0:
        raise SystemExit(f"only {minutes:.1f} minutes left for training: raise --deadline-minutes")
    epochs = max(2, round(minutes * 60.0 * args.slices_per_second / training["samples_per_epoch"]))
    train = ["train", "--config", str(args.config), "--set", f"training.epochs={epochs}",
             "--set", f"training.max_minutes={minutes:.2f}",
             "--set", f"training.validation_interval={max(1, epochs // 6)}"]  # fmt: skip
    if (run_dir / "checkpoints" / "last.pt").is_file():
        train.append("--resume")
    before = validation_seconds(log)
    times["train"] = lung_tumor(train, log, timeout=60.0 * (minutes + 3.0))

    metadata = json.loads((run_dir / "metadata.json").read_text())
    trained = metadata["iterations"] * training["batch_size"]
    step_seconds = metadata["seconds"] - (validation_seconds(log) - before)
    print(
        f"steps: {', '.join(f'{k} {v:.0f} s' for k, v in times.items())}; whole {time.monotonic() - started:.0f} s",
        flush=True,
    )
    print(
        f"trained {metadata['iterations']} iterations of {training['batch_size']} ({trained} slices, {epochs} epochs "
        f"planned) in {metadata['seconds']:.0f} s, {step_seconds:.0f} s of them training: "
        f"{trained / max(step_seconds, 1e-9):.0f} slices/s on {metadata['device']} (amp {metadata['amp']}); "
        f"best validation Dice {metadata['best_metric']:.3f} at epoch {metadata['best_metric_epoch']}",
        flush=True,
    )


if __name__ == "__main__":
    main()

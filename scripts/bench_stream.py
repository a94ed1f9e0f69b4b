"""Cost of the synthetic training stream against the training step, in seconds per slice.

    python scripts/bench_stream.py                     # demo config, the stream section's defaults
    python scripts/bench_stream.py --cases 4 --loader-batches 4

Times (1) making and preprocessing one stream case (``lung_tumor.training.stream.stream_case_arrays``), (2)
serving one slice of a case already made (slice choice, 2.5D stack, the demo's augmentation), (3) the demo
UNet2D's training step per slice (``bench_train.step_rate``, the demo's patch size and bfloat16 setting), and
(4) a data loader drawing from the stream alone with 0 and 2 workers. One worker serves a slice every
``case / slices_per_case + slice`` seconds on average; the stream keeps up when the workers together serve
streamed slices at least as fast as the network consumes them (``fraction`` of its slices per second).
Figures are noisy on a shared CPU: run it alone for numbers you mean to compare.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from pathlib import Path

import torch
from bench_train import network_for, step_rate
from monai.data import DataLoader

from lung_tumor.config import PreprocessConfig, StreamConfig, load_config
from lung_tumor.training.data import build_augmentation
from lung_tumor.training.run import context_slices, cpu_bf16_supported
from lung_tumor.training.stream import MixedDraws, SyntheticSliceStream, stream_case_arrays

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=CONFIGS / "demo.yaml")
    parser.add_argument("--cases", type=int, default=6, help="stream cases timed")
    parser.add_argument("--slices-per-case", type=int, default=8)
    parser.add_argument("--fraction", type=float, default=0.5, help="share of the draws from the stream")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps")
    parser.add_argument("--loader-batches", type=int, default=6, help="batches timed per loader (0: skip)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    config = load_config(args.config)
    preprocess = PreprocessConfig.from_dict(config.get_parsed_content("preprocess", default={}))
    stream = StreamConfig.from_dict(
        {**(config.get("stream") or {}), "enabled": True, "slices_per_case": args.slices_per_case}
    )
    context = context_slices(config)
    size = preprocess.image_size
    augmentation = build_augmentation(config.get("augmentation"), size)
    batch = int(config["training"]["batch_size"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.config.name}: {size} px, ", end="")
    print(f"{2 * context + 1} channels, stream size={stream.size} variety={stream.variety} ", end="")
    print(f"acquisition={stream.acquisition}, {stream.slices_per_case} slices per case")

    case_times = []
    for number in range(args.cases):
        start = time.perf_counter()
        image, _ = stream_case_arrays(number, stream, preprocess)
        case_times.append(time.perf_counter() - start)
        print(f"  case {number}: {image.shape[0]:3d} slices, {case_times[-1]:.2f} s")
    per_case = sum(case_times) / len(case_times)

    dataset = SyntheticSliceStream(stream, preprocess, context, augmentation, tumour_fraction=0.5)
    dataset.case(0)
    start = time.perf_counter()
    for seed in range(50):
        dataset[(0, seed)]
    per_item = (time.perf_counter() - start) / 50
    per_slice = per_case / stream.slices_per_case + per_item

    crop = (config.get("augmentation") or {}).get("crop_size") or size
    bf16 = bool(config["training"].get("amp")) and cpu_bf16_supported()
    network, channels = network_for(args.config, "unet2d")
    step = 1.0 / step_rate(network, channels, crop, batch, args.steps, bf16=bf16)

    print(f"\nstream case (synthesize + preprocess): {per_case:.3f} s (mean of {args.cases})")
    print(f"stream slice from a made case (stack + augmentation): {per_item * 1000:.1f} ms")
    print(f"stream slice, case shared by {stream.slices_per_case} draws: {per_slice * 1000:.1f} ms per worker")
    print(
        f"training step ({crop} px, batch {batch}, {'bfloat16' if bf16 else 'float32'}): {step * 1000:.1f} ms per slice"
    )
    needed = step / args.fraction  # seconds the network takes per streamed slice at this fraction
    workers = per_slice / needed
    print(f"at fraction {args.fraction}: the stream needs {workers:.2f} workers' time to keep up; ", end="")
    print("2 workers keep up" if workers <= 2 else "2 workers do NOT keep up (raise slices_per_case)")
    spare = 2 * needed - per_item  # seconds per streamed slice 2 workers have for making cases
    if spare > 0:
        print(f"2 workers keep up from slices_per_case >= {math.ceil(per_case / spare)}")
    else:
        print("2 workers cannot keep up at any slices_per_case (the augmentation alone is slower than the step)")

    if args.loader_batches > 0:
        print("\nloader drawing from the stream alone (worker start-up excluded):")
        for count in (0, 2):
            draws = MixedDraws(None, batch * (args.loader_batches + 1), 0, stream, seed=0)
            loader = DataLoader(dataset, batch_size=batch, sampler=draws, num_workers=count)
            iterator = iter(loader)
            next(iterator)
            start = time.perf_counter()
            slices = sum(len(b["image"]) for b in iterator)
            print(f"  {count} workers: {slices / (time.perf_counter() - start):7.1f} slices/s")


if __name__ == "__main__":
    main()

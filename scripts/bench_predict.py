"""Benchmark `lung-tumor predict` end to end on a full-size synthetic CT (512 x 512 x 300).

For the demo network and the default (recipe-width) network: seconds and peak memory of
read + preprocess + slice inference + restore to the input grid + write the mask (and the report),
side by side with a plain MONAI pipeline with the same network and in-plane geometry
(LoadImage, EnsureChannelFirst, Orientation, Spacing, ScaleIntensityRange, ResizeWithPadOrCrop,
SliceInferer, Invert, SaveImage). Weights are random: only the time matters here.
Each measurement runs in its own process (peak = ru_maxrss above the memory after imports).

Usage: python scripts/bench_predict.py [--work /tmp/lung_tumor_bench] (reuses bench_preprocess.py's volume)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_preprocess import SHAPE, rss_mb, write_volume  # noqa: E402

NETWORKS = {
    # name: (features, pixel_mm, image_size, context) as in configs/demo.yaml and configs/train.yaml
    "demo": ([16, 32, 64, 128], 3.75, 96, 2),
    "default": ([64, 128, 256, 512], 1.5, 256, 0),
}


def make_run(folder: Path, name: str) -> Path:
    from lung_tumor.networks import UNet2D

    features, pixel_mm, image_size, context = NETWORKS[name]
    network = UNet2D(in_channels=2 * context + 1, out_channels=1, features=features)
    with torch.no_grad():  # random weights, but a nearly empty mask as on a real scan
        network.final_conv.bias.fill_(-20.0)
    (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
    torch.save({"network": network.state_dict()}, folder / "checkpoints" / "best.pt")
    config = {
        "preprocess": {"crop_from_slice": 30, "pixel_mm": pixel_mm, "image_size": image_size},
        "context_slices": context,
        "network_def": {
            "_target_": "lung_tumor.networks.UNet2D",
            "in_channels": 2 * context + 1,
            "out_channels": 1,
            "features": features,
        },
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder


def plain_monai(run: Path, image: Path, output: Path) -> None:
    """The textbook MONAI pipeline for the same network and geometry (2D slices, no 2.5D context)."""
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

    network, config = load_trained_model(run)
    pre = config["preprocess"]
    size = (pre["image_size"], pre["image_size"], -1)
    preprocess = Compose(
        [
            LoadImaged("image"),
            EnsureChannelFirstd("image"),
            Orientationd("image", axcodes="RAS"),
            Spacingd("image", pixdim=(pre["pixel_mm"], pre["pixel_mm"], -1), mode="bilinear"),
            ScaleIntensityRanged("image", a_min=-1350, a_max=150, b_min=0, b_max=1, clip=True),
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
    context = config.get("context_slices", 0)

    def network_2d(x: torch.Tensor) -> torch.Tensor:  # the same channels as ours: repeat the slice for 2.5D
        return network(x.repeat(1, 2 * context + 1, 1, 1))

    data = preprocess({"image": str(image)})
    with torch.no_grad():
        data["pred"] = SliceInferer(roi_size=size[:2], sw_batch_size=32, spatial_dim=2)(
            data["image"][None], network_2d
        )[0]
    post(data)


def measure(kind: str, network: str, work: Path) -> dict[str, float]:
    torch.set_num_threads(2)
    from lung_tumor.inference import predict

    run = make_run(work / f"run_{network}", network)
    image = work / "imagesTr" / "lung_001.nii.gz"
    output = work / f"predictions_{kind}_{network}"
    baseline = rss_mb()
    start = time.perf_counter()
    if kind == "ours":
        predict(run, image, output=output, report=False)
    elif kind == "ours+report":
        predict(run, image, output=output)
    else:
        plain_monai(run, image, output)
    return {
        "seconds": time.perf_counter() - start,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - baseline,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/lung_tumor_bench"))
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS))
    parser.add_argument("--measure", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure[0], args.measure[1], args.work)))
        return
    if not (args.work / "dataset.json").is_file():
        write_volume(args.work)
    print(f"predict on one {SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]} volume, 2 threads, end to end (read to written mask)")
    print("| network | pipeline | seconds | peak MB above start |")
    print("|---|---|---|---|")
    for network in args.networks:
        for kind in ("ours", "ours+report", "plain"):
            command = [sys.executable, __file__, "--work", str(args.work), "--measure", kind, network]
            result = json.loads(
                subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1]
            )
            label = {
                "ours": "lung-tumor predict (mask)",
                "ours+report": "lung-tumor predict (mask and report)",
                "plain": "plain MONAI SliceInferer (mask)",
            }[kind]
            print(f"| {network} | {label} | {result['seconds']:.1f} | {result['peak_mb']:.0f} |")


if __name__ == "__main__":
    main()

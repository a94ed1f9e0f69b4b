"""Training throughput on this machine: network steps and the augmented data loader, in slices per second.

    python scripts/bench_train.py                      # demo and full sizes, UNet2D / MONAI UNet / BasicUNet
    python scripts/bench_train.py --skip-full --steps 5

The loader is measured on a 256 x 256 slice cache made from the demo's synthetic data
(``runs/demo/data``; ``lung-tumor synth --out runs/demo/data`` first) with the recipe's augmentation.
Figures are noisy on a shared CPU: run it alone for numbers you mean to compare.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import yaml
from monai.data import DataLoader
from monai.inferers import SimpleInferer

from lung_tumor.cache import SliceCache, SliceDataset
from lung_tumor.config import PreprocessConfig, load_config
from lung_tumor.preprocess import preprocess_dataset
from lung_tumor.training.data import build_augmentation, build_sampler, tumour_weights
from lung_tumor.training.losses import build_loss
from lung_tumor.training.run import AutocastInferer, context_slices, cpu_bf16_supported

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
NETWORKS = ("unet2d", "unet", "basic_unet")


def network_for(config_file: Path, name: str, features: list[int] | None = None) -> tuple[torch.nn.Module, int]:
    config = load_config(config_file)
    if features is not None:
        config["features"] = features
    if name != "unet2d":
        config["network_def"] = yaml.safe_load((CONFIGS / "networks" / f"{name}.yaml").read_text())["network_def"]
    return config.get_parsed_content("network_def"), 2 * context_slices(config) + 1


def step_rate(network: torch.nn.Module, channels: int, size: int, batch: int, steps: int, bf16: bool = False) -> float:
    """Slices per second of forward, Dice+BCE loss, backward and Adam step (optionally under bfloat16 autocast)."""
    forward = AutocastInferer("cpu", torch.bfloat16) if bf16 else SimpleInferer()
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-4)
    loss_fn = build_loss({"name": "dice_bce", "batch": True})
    image = torch.rand(batch, channels, size, size)
    label = (torch.rand(batch, 1, size, size) > 0.95).float()
    network.train()
    timings = []
    for _ in range(steps + 1):  # the first step warms up allocators
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss_fn(forward(image, network), label).backward()
        optimizer.step()
        timings.append(time.perf_counter() - start)
    return batch / (sum(timings[1:]) / steps)


def loader_rate(cache_dir: Path, batches: int, workers: int, batch: int = 8) -> float:
    recipe = load_config(CONFIGS / "recipe.yaml")
    cache = SliceCache(cache_dir)
    augmentation = build_augmentation(recipe["augmentation"], cache.preprocess.image_size, seed=0)
    dataset = SliceDataset(cache, cache.cases, context=1, transform=augmentation)
    weights = tumour_weights(dataset.tumour_flags, tumour_weight=8.2)
    sampler = build_sampler(dataset, weights, num_samples=batch * (batches + 2))
    loader = DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers, persistent_workers=False)
    iterator = iter(loader)
    next(iterator)  # worker start-up is not throughput
    start = time.perf_counter()
    count = sum(len(b["image"]) for _, b in zip(range(batches), iterator, strict=False))
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per network and size")
    parser.add_argument("--skip-full", action="store_true", help="skip the 256 x 256, 64..512 configuration")
    parser.add_argument("--data", type=Path, default=Path("runs/demo/data"), help="MSD-layout data for the loader")
    parser.add_argument("--work", type=Path, default=Path("/tmp/lung_tumor_bench_train"))
    parser.add_argument("--loader-batches", type=int, default=30)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    demo = load_config(CONFIGS / "demo.yaml")
    sizes = [("demo", CONFIGS / "demo.yaml", demo["preprocess"]["image_size"], None, demo["training"]["batch_size"])]
    if not args.skip_full:
        sizes.append(("full", CONFIGS / "train.yaml", 256, [64, 128, 256, 512], 8))
    rates: dict[tuple[str, str], float] = {}
    print(f"\n{'config':6} {'network':11} {'size':>5} {'batch':>5} {'parameters':>11} {'slices/s':>9}")
    for label, config_file, size, features, batch in sizes:
        for name in NETWORKS:
            network, channels = network_for(config_file, name, features)
            rate = step_rate(network, channels, size, batch, args.steps)
            rates[label, name] = rate
            parameters = sum(p.numel() for p in network.parameters())
            print(f"{label:6} {name:11} {size:5d} {batch:5d} {parameters:11,d} {rate:9.2f}")

    size = demo["preprocess"]["image_size"]
    crop = demo["augmentation"].get("crop_size") or size
    batch = demo["training"]["batch_size"]
    print(f"\ndemo UNet2D, batch {batch}: float32 against bfloat16 autocast (training.amp; native bfloat16 on")
    print(f"this CPU: {cpu_bf16_supported()}), whole {size} px slices against {crop} px patches")
    network, channels = network_for(CONFIGS / "demo.yaml", "unet2d")
    for pixels, bf16 in ((size, False), (size, True), (crop, False), (crop, True)):
        rate = step_rate(network, channels, pixels, batch, args.steps, bf16=bf16)
        print(f"  {pixels:4d} px {'bfloat16' if bf16 else 'float32':9} {rate:9.2f} slices/s")

    cache_dir = args.work / "cache256"
    cfg = PreprocessConfig(crop_from_slice=8, pixel_mm=1.4, image_size=256, num_workers=2)
    preprocess_dataset(args.data, cache_dir, cfg, progress=False)
    print("\nloader: 256 x 256, 2.5D (3 channels), recipe augmentation (affine + elastic), batch 8")
    for workers in (0, 2):
        rate = loader_rate(cache_dir, args.loader_batches, workers)
        print(f"  {workers} workers: {rate:8.1f} slices/s")
    if ("full", "unet2d") in rates:
        print(f"  2 workers / UNet2D full training step: {rate / rates['full', 'unet2d']:.1f}x")


if __name__ == "__main__":
    main()

"""Study: a 3D U-Net on a 1.25 mm isotropic grid, alone and beside the shipped pair (small nodules).

Every 2.5D model so far misses nearly every nodule under 2 cm on scans it has not seen: on five neighbouring slices
a nodule and a vessel cut across look alike, and in 3D one is a ball and the other a tube. This study trains a small
3D U-Net (MONAI's ``UNet``) on 64-voxel cubes (80 mm) of full-size synthetic scans resampled to 1.25 mm in every
axis, with every lesion drawn alike, and scores it on the validation scans, alone and with its lesions added to
the shipped pair's mask. Each step keeps its files in ``--work`` and skips or resumes what is there:

1. prepare: each training scan oriented RAS, resampled to 1.25 mm (image trilinear, label nearest), cropped to the
   body, stored as int16 HU and uint8 label, with sample points (voxels of each lesion, of lung, of the body);
2. train: batches of cubes, half around a lesion (each lesion drawn alike), a quarter in lung, a quarter anywhere
   in the body; mirror images and small HU shifts; Dice over the batch + cross-entropy; AdamW with a cosine
   schedule over ``--steps``; a checkpoint every 100 steps (``--max-minutes`` stops early, resumable);
3. infer: MONAI's sliding window over each validation scan on the same grid, the probability resampled back to the
   scan's own grid (float16);
4. score: the 3D network alone and added to the pair's validation masks at thresholds, minimum volumes, maximum
   volumes and the pair's own support (its probability's peak inside a 3D lesion) of a grid: ``tune``'s objective
   (tumour-free scans 1 when empty), mean Dice of the tumour scans, lesions of 5 mm or more found, false lesions per
   scan.

Hard negatives: ``--step mine --init CHECKPOINT`` runs a trained network over its own prepared training scans and
keeps points inside each of its false lesions (``WORK/hard``); ``--step train --init CHECKPOINT --hard-fraction 0.25
--lr 3e-4`` then fine-tunes it with that share of its cubes centred on them.

    lung-tumor synth --out runs/study3d/extra --cases 40 --test-cases 0 --size full --seed 8181 --variety varied \\
        --acquisition varied --max-minutes 25
    python scripts/study_3d.py --train-data runs/candidates/train --train-data runs/study3d/extra \\
        --val-data runs/pretrained/validation_full --pair-masks runs/study3d/pair_validation

``--step pair`` writes the pair's masks of ``--val-data`` into ``--pair-masks`` first (they are the shipped model's,
so any other scan set can be scored the same way, once its rule allows).

The validation scans choose. The held-out scans of ``bench_generalisation.py`` (``--val-data runs/heldout_full``) and
the real CTs are scored only after a rule written beforehand lets them.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.networks.nets import UNet
from scipy import ndimage
from tqdm import tqdm

from lung_tumor.data.msd import list_cases
from lung_tumor.evaluation.lesions import label_lesions
from lung_tumor.inference import Predictor
from lung_tumor.measurements import voxel_spacing
from lung_tumor.models import default_model_dir
from lung_tumor.transforms.pipeline import load_volume

GRID_MM = 1.25
PATCH = 64
HU_RANGE = (-1000.0, 400.0)
BODY_HU = -500.0
LUNG_HU = (-1000.0, -400.0)
POINTS = 400  # sample points kept per lesion and per region
MINE_THRESHOLD = 0.5  # a false lesion to mine: a component above this probability touching no lesion voxel,
MINE_MIN_VOXELS = 16  # of at least this many voxels (31 mm3)
MINE_SEED = 29

log = logging.getLogger("study_3d")


def network() -> UNet:
    return UNet(3, 1, 1, channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=1)


def oriented(path: Path, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A volume's voxels turned to RAS axes (nibabel's orientation), their spacing, and the turn that undoes it."""
    volume = load_volume(path, what)
    affine = np.asarray(volume.affine, dtype=float)
    to_ras = nib.orientations.io_orientation(affine)
    array = nib.orientations.apply_orientation(np.asarray(volume[0], dtype=np.float32), to_ras)
    spacing = np.asarray(voxel_spacing(affine))[to_ras[:, 0].astype(int)]
    back = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"), to_ras)
    return array, spacing, back


def resize(array: np.ndarray, shape: tuple[int, ...], mode: str) -> np.ndarray:
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    kwargs = {"align_corners": False} if mode == "trilinear" else {}
    return torch.nn.functional.interpolate(tensor, size=shape, mode=mode, **kwargs)[0, 0].numpy()


def grid_shape(shape: tuple[int, ...], spacing: np.ndarray) -> tuple[int, ...]:
    return tuple(max(1, round(n * s / GRID_MM)) for n, s in zip(shape, spacing, strict=True))


def to_grid(path: Path, what: str, mode: str) -> np.ndarray:
    """A volume turned to RAS and resampled to ``GRID_MM`` in every axis."""
    array, spacing, _ = oriented(path, what)
    return resize(array, grid_shape(array.shape, spacing), mode)


def body_box(image: np.ndarray) -> tuple[slice, ...]:
    body = ndimage.binary_opening(image > BODY_HU, iterations=2)
    labels, count = ndimage.label(body)
    if count:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        body = labels == sizes.argmax()
    where = np.argwhere(body) if body.any() else np.argwhere(np.ones_like(image, bool))
    low, high = where.min(0), where.max(0) + 1
    return tuple(slice(max(0, a - 4), min(n, b + 4)) for a, b, n in zip(low, high, image.shape, strict=True))


def points(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    where = np.argwhere(mask)
    if len(where) > POINTS:
        where = where[rng.choice(len(where), POINTS, replace=False)]
    return where.astype(np.int16)


def prepare_case(image_path: Path, label_path: Path, out: Path) -> None:
    if (out / "meta.json").exists():
        return
    out.mkdir(parents=True, exist_ok=True)
    image = to_grid(image_path, "image", "trilinear")
    label = to_grid(label_path, "label", "nearest")
    box = body_box(image)
    image, label = image[box], label[box] > 0.5
    rng = np.random.default_rng(len(out.name))
    lesions, count = ndimage.label(label, structure=np.ones((3, 3, 3)))
    lesion_points = [
        points(lesions[box] == i, rng) + [b.start for b in box]
        for i, box in enumerate(ndimage.find_objects(lesions), start=1)
    ]
    inside = np.stack([ndimage.binary_fill_holes(image[..., z] > BODY_HU) for z in range(image.shape[2])], -1)
    lung = inside & (image > LUNG_HU[0]) & (image < LUNG_HU[1])
    np.save(out / "image.npy", np.clip(image, -1024, 3071).astype(np.int16))
    np.save(out / "label.npy", label.astype(np.uint8))
    np.savez(
        out / "points.npz",
        lung=points(lung, rng),
        body=points(image > BODY_HU, rng),
        **{f"lesion_{i}": p for i, p in enumerate(lesion_points)},
    )
    (out / "meta.json").write_text(json.dumps({"lesions": count, "shape": image.shape, "source": str(image_path)}))


class CubeSampler:
    """Random training cubes from the prepared scans (memory-mapped)."""

    def __init__(
        self, folders: list[Path], seed: int, hard_dir: Path | None = None, hard_fraction: float = 0.0
    ) -> None:
        self.rng = np.random.default_rng(seed)
        self.cases = []
        for folder in folders:
            pts = dict(np.load(folder / "points.npz"))
            lesions = [pts[k] for k in sorted(pts) if k.startswith("lesion_") and len(pts[k]) >= 8]
            hard = dict(np.load(hard_dir / f"{folder.name}.npz")) if hard_dir is not None else {}
            self.cases.append(
                {
                    "image": np.load(folder / "image.npy", mmap_mode="r"),
                    "label": np.load(folder / "label.npy", mmap_mode="r"),
                    "lung": pts["lung"],
                    "body": pts["body"],
                    "lesions": lesions,
                    "hard": [hard[k] for k in sorted(hard)],
                }
            )
        self.lesions = [(c, i) for c, case in enumerate(self.cases) for i in range(len(case["lesions"]))]
        self.hard = [(c, i) for c, case in enumerate(self.cases) for i in range(len(case["hard"]))]
        self.hard_fraction = hard_fraction if self.hard else 0.0

    def cube(self, case: dict, centre: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        image, label = case["image"], case["label"]
        start = [int(c) - PATCH // 2 for c in centre]
        source, target = [], []
        for s, n in zip(start, image.shape, strict=True):
            a, b = max(s, 0), min(s + PATCH, n)
            source.append(slice(a, b))
            target.append(slice(a - s, b - s))
        x = np.full((PATCH,) * 3, -1024.0, np.float32)
        y = np.zeros((PATCH,) * 3, np.float32)
        x[tuple(target)] = image[tuple(source)]
        y[tuple(target)] = label[tuple(source)]
        return x, y

    def draw(self) -> tuple[np.ndarray, np.ndarray]:
        """A cube: with ``hard_fraction`` around a mined false lesion (each alike), else half around a true lesion
        (each alike), a quarter in lung, a quarter in the body."""
        if self.hard_fraction and self.rng.random() < self.hard_fraction:
            c, i = self.hard[self.rng.integers(len(self.hard))]
            case = self.cases[c]
            pts = case["hard"][i]
            centre = pts[self.rng.integers(len(pts))] + self.rng.integers(-8, 9, 3)
            return self.augment(*self.cube(case, centre))
        kind = self.rng.random()
        if kind < 0.5 and self.lesions:
            c, i = self.lesions[self.rng.integers(len(self.lesions))]
            case = self.cases[c]
            pts = case["lesions"][i]
            centre = pts[self.rng.integers(len(pts))] + self.rng.integers(-16, 17, 3)
        else:
            case = self.cases[self.rng.integers(len(self.cases))]
            pts = case["lung"] if kind < 0.75 and len(case["lung"]) else case["body"]
            centre = pts[self.rng.integers(len(pts))]
        return self.augment(*self.cube(case, centre))

    def augment(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        for axis in (0, 1):  # left-right and front-back mirror images; head-foot kept
            if self.rng.random() < 0.5:
                x, y = np.flip(x, axis), np.flip(y, axis)
        x = x * self.rng.uniform(0.95, 1.05) + self.rng.uniform(-30, 30)
        return normalise(x), np.ascontiguousarray(y)

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = zip(*(self.draw() for _ in range(size)), strict=True)
        return torch.from_numpy(np.stack(xs)[:, None]), torch.from_numpy(np.stack(ys)[:, None])


def normalise(hu: np.ndarray) -> np.ndarray:
    low, high = HU_RANGE
    return np.ascontiguousarray((np.clip(hu, low, high) - low) / (high - low), dtype=np.float32)


def train(
    folders: list[Path],
    work: Path,
    steps: int,
    batch: int,
    max_minutes: float,
    seed: int,
    lr: float = 1e-3,
    init: Path | None = None,
    hard_dir: Path | None = None,
    hard_fraction: float = 0.0,
) -> Path:
    """Train (or, from ``init``'s weights, fine-tune) the network into ``work/model.pt``; resumes a checkpoint."""
    checkpoint = work / "model.pt"
    torch.manual_seed(seed)
    net = network()
    if init is not None:
        net.load_state_dict(torch.load(init, weights_only=False)["model"])
    optimiser = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    step = 0
    if checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False)
        net.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        schedule.load_state_dict(state["schedule"])
        step = state["step"]
    if step >= steps:
        return checkpoint
    sampler = CubeSampler(folders, seed + step, hard_dir, hard_fraction)
    loss_fn = DiceCELoss(sigmoid=True, batch=True)
    start = time.time()
    losses: list[float] = []
    net.train()
    while step < steps and (time.time() - start) < max_minutes * 60:
        x, y = sampler.batch(batch)
        loss = loss_fn(net(x), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        step += 1
        losses.append(float(loss.detach()))
        if step % 100 == 0 or step == steps:
            tmp = checkpoint.with_suffix(".tmp")
            torch.save(
                {
                    "model": net.state_dict(),
                    "optimiser": optimiser.state_dict(),
                    "schedule": schedule.state_dict(),
                    "step": step,
                },
                tmp,
            )
            tmp.replace(checkpoint)
            log.info("step %d/%d loss %.4f (%.1f min)", step, steps, np.mean(losses[-100:]), (time.time() - start) / 60)
    return checkpoint


def load_network(checkpoint: Path) -> UNet:
    net = network()
    net.load_state_dict(torch.load(checkpoint, weights_only=False)["model"])
    return net.eval()


def grid_probability(net: UNet, image: np.ndarray) -> np.ndarray:
    """The network's probability over an image (HU) already on the 1.25 mm grid: MONAI's Gaussian sliding window."""
    x = torch.from_numpy(normalise(image))[None, None]
    with torch.no_grad():
        logits = sliding_window_inference(x, (96, 96, 96), 4, net, overlap=0.25, mode="gaussian")
    return torch.sigmoid(logits)[0, 0].numpy()


def hard_negatives(probability: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Points inside each of the network's false lesions (components above ``MINE_THRESHOLD`` that touch no lesion
    voxel and hold at least ``MINE_MIN_VOXELS``), one array per false lesion."""
    components, _ = label_lesions(probability > MINE_THRESHOLD)
    found = {}
    for index, box in enumerate(ndimage.find_objects(components), start=1):
        own = components[box] == index
        if own.sum() >= MINE_MIN_VOXELS and not label[box][own].any():
            found[f"false_{len(found)}"] = points(own, rng) + [b.start for b in box]
    return found


def mine(net: UNet, folder: Path, target: Path) -> int:
    """The network's false lesions on one prepared training scan, saved as points in ``target``; their count."""
    if target.exists():
        with np.load(target) as mined:
            return len(mined.files)
    probability = grid_probability(net, np.load(folder / "image.npy").astype(np.float32))
    found = hard_negatives(probability, np.load(folder / "label.npy") > 0, np.random.default_rng(MINE_SEED))
    tmp = target.with_suffix(".tmp.npz")
    np.savez(tmp, **found)
    tmp.replace(target)
    return len(found)


def infer(net: UNet, image_path: Path) -> np.ndarray:
    """The 3D network's probability on the scan's own grid (float16)."""
    array, spacing, back = oriented(image_path, "image")
    image = resize(array, grid_shape(array.shape, spacing), "trilinear")
    box = body_box(image)
    full = np.zeros(image.shape, np.float32)
    full[box] = grid_probability(net, image[box])
    full = resize(full, array.shape, "trilinear")
    return nib.orientations.apply_orientation(full, back).astype(np.float16)


THRESHOLDS = (0.3, 0.5, 0.7, 0.9)
MIN_MM3 = (0.0, 30.0, 100.0, 300.0, 1000.0)
MAX_ML = (None, 4.0, 14.0)
SUPPORT = (0.0, 0.15, 0.3, 0.5)  # the pair's own probability must peak at least this high inside a 3D lesion
MIN_DIAMETER_MM = 5.0


def case_components(
    probability: np.ndarray,
    truth: np.ndarray,
    pair: np.ndarray,
    spacing: tuple,
    pair_probability: np.ndarray | None = None,
) -> dict:
    """Per scan: the truth lesions (>= 5 mm flags), what the pair's mask touches and holds, and per threshold the 3D
    network's lesions with the counts each setting needs (volume, voxels outside the pair, overlaps with the truth
    inside and outside the pair, truth lesions touched, whether it touches the pair, the pair's peak probability
    inside it: 1 without ``pair_probability``)."""
    voxel_mm3 = float(np.prod(spacing))
    interest = truth | pair | (probability > min(THRESHOLDS))
    if interest.any():
        where = np.argwhere(interest)
        box = tuple(slice(max(0, a - 2), b + 3) for a, b in zip(where.min(0), where.max(0), strict=True))
        probability, truth, pair = probability[box], truth[box], pair[box]
        if pair_probability is not None:
            pair_probability = pair_probability[box]
    true_labels, n_true = label_lesions(truth)
    sizes = np.bincount(true_labels.ravel(), minlength=n_true + 1)[1:]
    large = [bool(np.cbrt(6.0 * v * voxel_mm3 / math.pi) >= MIN_DIAMETER_MM) for v in sizes]
    pair_labels, n_pair = label_lesions(pair)
    pair_hits = set(np.unique(true_labels[pair & (true_labels > 0)]).tolist())
    pair_false = n_pair - np.unique(pair_labels[pair & (true_labels > 0)]).size
    by_threshold = {}
    for threshold in THRESHOLDS:
        labels, count = label_lesions(probability > threshold)
        comps = []
        for index, box in enumerate(ndimage.find_objects(labels), start=1):
            own = labels[box] == index
            t, p = truth[box] & own, pair[box] & own
            comps.append(
                {
                    "mm3": float(own.sum()) * voxel_mm3,
                    "outside_pair": int(own.sum() - p.sum()),
                    "voxels": int(own.sum()),
                    "truth": int(t.sum()),
                    "truth_outside_pair": int((t & ~pair[box]).sum()),
                    "hits": set(np.unique(true_labels[box][own & (true_labels[box] > 0)]).tolist()),
                    "touches_pair": bool(p.any()),
                    "support": 1.0 if pair_probability is None else float(pair_probability[box][own].max()),
                }
            )
        by_threshold[threshold] = comps
    return {
        "truth_voxels": int(truth.sum()),
        "large": large,
        "pair_voxels": int(pair.sum()),
        "pair_truth": int((pair & truth).sum()),
        "pair_hits": pair_hits,
        "pair_false": int(pair_false),
        "components": by_threshold,
    }


def score_setting(
    cases: list[dict], threshold: float, min_mm3: float, max_ml: float | None, with_pair: bool, support: float = 0.0
) -> dict:
    objective, tumour_dice, found, total, false = [], [], 0, 0, 0
    for case in cases:
        chosen = [
            c
            for c in case["components"][threshold]
            if c["mm3"] >= min_mm3 and (max_ml is None or c["mm3"] <= max_ml * 1000) and c["support"] >= support
        ]
        if with_pair:
            voxels = case["pair_voxels"] + sum(c["outside_pair"] for c in chosen)
            overlap = case["pair_truth"] + sum(c["truth_outside_pair"] for c in chosen)
            hits = set(case["pair_hits"]).union(*(c["hits"] for c in chosen))
            false += case["pair_false"] + sum(1 for c in chosen if not c["hits"] and not c["touches_pair"])
        else:
            voxels = sum(c["voxels"] for c in chosen)
            overlap = sum(c["truth"] for c in chosen)
            hits = set().union(*(c["hits"] for c in chosen))
            false += sum(1 for c in chosen if not c["hits"])
        total_voxels = voxels + case["truth_voxels"]
        dice = 1.0 if total_voxels == 0 else 2.0 * overlap / total_voxels
        objective.append(dice)
        if case["truth_voxels"]:
            tumour_dice.append(dice)
        total += sum(case["large"])
        found += sum(1 for i, big in enumerate(case["large"], start=1) if big and i in hits)
    return {
        "with_pair": with_pair,
        "threshold": threshold,
        "min_mm3": min_mm3,
        "max_ml": max_ml,
        "support": support,
        "objective": round(float(np.mean(objective)), 4),
        "tumour_dice": round(float(np.mean(tumour_dice)), 4),
        "found": f"{found}/{total}",
        "found_count": found,
        "false_per_scan": round(false / len(cases), 3),
    }


def pair_masks(data: Path, out: Path) -> None:
    """The shipped pair's masks (its stored settings, as ``predict`` makes them) of every scan of ``data``."""
    predictor = Predictor(default_model_dir())
    out.mkdir(parents=True, exist_ok=True)
    for case in list_cases(data):
        target = out / f"pair_{case.case_id}.npz"
        if not target.exists():
            result = predictor.predict_file(case.image)
            np.savez_compressed(
                target,
                mask=np.asarray(result.mask) != 0,
                spacing=np.asarray(result.spacing),
                probability=np.asarray(result.probability, dtype=np.float16),
            )
            log.info("pair mask %s", case.case_id)


def score(val_data: Path, work: Path, pair_masks: Path) -> list[dict]:
    cases, supported = [], True
    for case in list_cases(val_data):
        probability = np.load(work / val_data.name / f"{case.case_id}.npy").astype(np.float32)
        truth = np.asarray(nib.load(case.label).dataobj) != 0
        pair = np.load(pair_masks / f"pair_{case.case_id}.npz")
        spacing = tuple(pair["spacing"].tolist())
        pair_probability = pair["probability"].astype(np.float32) if "probability" in pair.files else None
        supported &= pair_probability is not None
        cases.append(case_components(probability, truth, pair["mask"].astype(bool), spacing, pair_probability))
        log.info("scored %s", case.case_id)
    supports = SUPPORT if supported else SUPPORT[:1]  # masks of an older pair step hold no probability
    rows = [score_setting(cases, t, m, None, False, s) for t in THRESHOLDS for m in MIN_MM3 for s in supports]
    rows += [
        score_setting(cases, t, m, x, True, s) for t in THRESHOLDS for m in MIN_MM3 for x in MAX_ML for s in supports
    ]
    rows.append(score_setting(cases, THRESHOLDS[0], math.inf, None, True))  # the pair alone
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-data", type=Path, action="append", required=True)
    parser.add_argument("--val-data", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("runs/study3d"))
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-minutes", type=float, default=float("inf"))
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--prepared", type=Path, help="the prepared scans (default: WORK/prepared)")
    parser.add_argument("--init", type=Path, help="fine-tune from this checkpoint; mine its false lesions")
    parser.add_argument("--hard-fraction", type=float, default=0.0, help="share of cubes on mined false lesions")
    parser.add_argument("--pair-masks", type=Path, default=Path("runs/study3d/pair_validation"))
    parser.add_argument("--step", choices=("prepare", "mine", "train", "infer", "pair", "score", "all"), default="all")
    args = parser.parse_args()
    if args.step == "mine" and args.init is None:
        parser.error("--step mine needs --init (the network whose false lesions are mined)")
    if not 0.0 <= args.hard_fraction < 1.0:
        parser.error(f"--hard-fraction must lie in [0, 1), got {args.hard_fraction}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(2)
    prepared = args.prepared or args.work / "prepared"
    hard_dir = args.work / "hard"
    folders = []
    for data in args.train_data:
        for case in list_cases(data):
            folder = prepared / f"{data.name}_{case.case_id}"
            if args.step in ("prepare", "all"):
                t = time.time()
                prepare_case(Path(case.image), Path(case.label), folder)
                log.info("prepared %s (%.1f s)", folder.name, time.time() - t)
            if (folder / "meta.json").exists():
                folders.append(folder)
    if args.step == "mine":
        hard_dir.mkdir(parents=True, exist_ok=True)
        net = load_network(args.init)
        counts = []
        for folder in tqdm(folders, desc="mine"):
            counts.append(mine(net, folder, hard_dir / f"{folder.name}.npz"))
        log.info("%d false lesions mined on %d scans", sum(counts), len(counts))
    if args.step in ("train", "all"):
        unmined = [f.name for f in folders if not (hard_dir / f"{f.name}.npz").exists()]
        if args.hard_fraction and unmined:
            parser.error(f"--hard-fraction: {hard_dir} holds no mined false lesions of {unmined[0]}: run --step mine")
        train(
            folders,
            args.work,
            args.steps,
            args.batch,
            args.max_minutes,
            args.seed,
            lr=args.lr,
            init=args.init,
            hard_dir=hard_dir if args.hard_fraction else None,
            hard_fraction=args.hard_fraction,
        )
    if args.step in ("infer", "all"):
        out = args.work / args.val_data.name
        out.mkdir(parents=True, exist_ok=True)
        net = load_network(args.work / "model.pt")
        for case in list_cases(args.val_data):
            target = out / f"{case.case_id}.npy"
            if target.exists():
                continue
            t = time.time()
            probability = infer(net, Path(case.image))
            np.save(target, probability)
            log.info("inferred %s (%.1f s)", case.case_id, time.time() - t)
    if args.step == "pair":
        pair_masks(args.val_data, args.pair_masks)
    if args.step in ("score", "all"):
        rows = score(args.val_data, args.work, args.pair_masks)
        (args.work / f"score_{args.val_data.name}.json").write_text(json.dumps(rows, indent=1))
        allowed = [r for r in rows[:-1] if r["false_per_scan"] <= 0.5]  # the last row: the pair alone
        for row in sorted(allowed, key=lambda r: -r["objective"])[:15] + [rows[-1]]:
            print(row)


if __name__ == "__main__":
    main()

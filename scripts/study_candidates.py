"""Study: a 3D patch classifier of the shipped model's low-threshold candidates (false-lesion reduction).

The shipped pair, thresholded low (``--low``, 0.15), touches far more of the validation lesions than its stored
post-processing keeps, among dozens of false candidates per scan. This study asks whether a small 3D CNN (MONAI's
``Classifier``) that sees a 40 mm cube of CT and probability around each candidate can tell the true ones from the
false ones well enough to add them to the shipped mask. Each step keeps its files in ``--work`` and skips what is
there, so an interrupted run goes on where it stopped:

1. probabilities: the pair's probability map of every scan of ``--train-data`` (no mirror images) and of
   ``--val-data`` (the stored settings, as ``predict`` computes them), on the input grid, float16;
2. patches: for each training scan, a cube around every candidate (label: does it touch a true lesion) and around
   every true lesion of 3 mm or more (jittered and turned copies); for each validation scan, a cube around every
   candidate the stored post-processing does not keep, with its voxel counts;
3. train: the classifier, on balanced batches (flips and in-plane turns), a fixed number of epochs;
4. score: on the validation scans, the stored mask alone and with the candidates whose score passes each threshold
   of a grid: mean per-case Dice over the tumour scans, lesions of 5 mm or more touched, false lesions per scan (a
   minimum score of 0 adds every candidate: the lesions any classifier of them could reach).

    lung-tumor synth --out runs/candidates/train --cases 60 --test-cases 0 --size full --seed 4646 \\
        --variety varied --acquisition varied --workers 2
    python scripts/study_candidates.py --train-data runs/candidates/train --val-data runs/pretrained/validation_full

The validation scans choose; the held-out scans of ``bench_generalisation.py`` are not read here.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.networks.nets import Classifier
from scipy import ndimage
from scipy.spatial.transform import Rotation

from lung_tumor.data.msd import list_cases
from lung_tumor.evaluation.lesions import label_lesions
from lung_tumor.inference import Predictor, clean_mask
from lung_tumor.io import write_atomic
from lung_tumor.measurements import voxel_spacing
from lung_tumor.models import default_model_dir
from lung_tumor.postprocessing import load_postprocessing
from lung_tumor.transforms.tumour_insertion import equivalent_diameter_mm

PATCH = 32  # voxels per side of the cube
PATCH_MM = 1.25  # its voxel size: a 40 mm cube in world axes
HU_RANGE = (-1000.0, 400.0)
SCORE_GRID = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995)


def candidates(probability: np.ndarray, low: float) -> tuple[np.ndarray, list[tuple[int, np.ndarray, float, int]]]:
    """The 26-connected components of ``probability > low``: labels and, per component, (label, centroid in voxels,
    peak probability, voxels)."""
    labels, count = label_lesions(probability > low)
    if count == 0:
        return labels, []
    where = np.nonzero(labels)
    index = labels[where]
    sizes = np.bincount(index, minlength=count + 1)
    centres = (
        np.stack([np.bincount(index, axis, minlength=count + 1) for axis in where], 1) / np.maximum(sizes, 1)[:, None]
    )
    peaks = np.zeros(count + 1, np.float32)
    np.maximum.at(peaks, index, probability[where])
    return labels, [(i, centres[i], float(peaks[i]), int(sizes[i])) for i in range(1, count + 1)]


def cube(
    volume: np.ndarray,
    affine: np.ndarray,
    centre_voxel: np.ndarray,
    fill: float,
    turn: np.ndarray | None = None,
    shift_mm: np.ndarray | None = None,
) -> np.ndarray:
    """A PATCH^3 cube of PATCH_MM voxels along the world axes around ``centre_voxel`` (trilinear), optionally turned
    and shifted in world space."""
    steps = (np.arange(PATCH) - (PATCH - 1) / 2.0) * PATCH_MM
    offsets = np.stack(np.meshgrid(steps, steps, steps, indexing="ij"), -1).reshape(-1, 3)
    if turn is not None:
        offsets = offsets @ turn.T
    centre = affine[:3, :3] @ centre_voxel + affine[:3, 3] + (0 if shift_mm is None else shift_mm)
    voxels = np.linalg.inv(affine[:3, :3]) @ (offsets + centre - affine[:3, 3]).T
    values = ndimage.map_coordinates(volume, voxels, order=1, mode="constant", cval=fill, prefilter=False)
    return values.reshape(PATCH, PATCH, PATCH)


def patch(hu: np.ndarray, probability: np.ndarray, affine: np.ndarray, centre: np.ndarray, **moves) -> np.ndarray:
    """The classifier's input: CT scaled from HU_RANGE to 0..1, and the probability, as a (2, PATCH^3) float16 cube."""
    ct = (np.clip(cube(hu, affine, centre, HU_RANGE[0], **moves), *HU_RANGE) - HU_RANGE[0]) / np.ptp(HU_RANGE)
    return np.stack([ct, cube(probability, affine, centre, 0.0, **moves)]).astype(np.float16)


def save_npz(target: Path, **arrays) -> None:
    """``np.savez`` to ``target`` atomically, so that an interrupted step leaves no file it would skip."""
    write_atomic(target, lambda stream: np.savez(stream, **arrays), mode="wb")


def stack_cubes(cubes: list[np.ndarray]) -> np.ndarray:
    """The cubes as one (N, 2, PATCH^3) array, N possibly 0."""
    return np.stack(cubes) if cubes else np.zeros((0, 2, PATCH, PATCH, PATCH), np.float16)


def true_lesions(truth: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, int, np.ndarray]:
    """The true lesions' labels, count, and equivalent diameters in mm (lesion ``i`` at index ``i - 1``)."""
    lesions, count = label_lesions(truth)
    voxels = np.bincount(lesions.ravel(), minlength=count + 1)[1:]
    spacing = np.array(voxel_spacing(affine))
    return lesions, count, np.array([equivalent_diameter_mm(int(v), spacing) for v in voxels])


def read_case(case, probabilities: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    image = nib.load(case.image)
    hu = np.asarray(image.dataobj, dtype=np.float32)
    truth = np.asarray(nib.load(case.label).dataobj) > 0
    probability = np.load(probabilities / f"{case.case_id}.npy").astype(np.float32)
    return hu, truth, probability, image.affine


def write_probabilities(data: Path, out: Path, mirrored: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    predictor = Predictor(default_model_dir(), flip_tta=mirrored)
    for case in list_cases(data):
        target = out / f"{case.case_id}.npy"
        if target.exists():
            continue
        start = time.perf_counter()
        prepared = predictor.prepare(case.image)
        probability = predictor.restore(prepared, predictor.probabilities(prepared.volume)).astype(np.float16)
        write_atomic(target, lambda stream, p=probability: np.save(stream, p), mode="wb")
        print(f"probabilities {case.case_id}: {probability.shape}, {time.perf_counter() - start:.1f} s", flush=True)


def training_patches(data: Path, probabilities: Path, out: Path, low: float, seed: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for number, case in enumerate(list_cases(data)):
        target = out / f"{case.case_id}.npz"
        if target.exists():
            continue
        rng = np.random.default_rng(seed + number)
        hu, truth, probability, affine = read_case(case, probabilities)
        labels, found = candidates(probability, low)
        touching = set(np.unique(labels[(labels > 0) & truth]).tolist())
        cubes, classes = [], []
        for index, centre, _, _ in found:
            true = index in touching
            for copy in range(4 if true else 1):
                turn = Rotation.from_euler("z", rng.uniform(0, 360), degrees=True).as_matrix() if copy else None
                shift = rng.normal(0, 1.5, 3) if copy else None
                cubes.append(patch(hu, probability, affine, centre, turn=turn, shift_mm=shift))
                classes.append(int(true))
        lesions, count, diameters = true_lesions(truth, affine)
        for centre, diameter in zip(
            ndimage.center_of_mass(truth, lesions, range(1, count + 1)), diameters, strict=True
        ):
            if diameter < 3:
                continue
            for _ in range(6):
                angles = [rng.uniform(0, 360), rng.normal(0, 10), rng.normal(0, 10)]
                turn = Rotation.from_euler("zyx", angles, degrees=True).as_matrix()
                cubes.append(patch(hu, probability, affine, np.array(centre), turn=turn, shift_mm=rng.normal(0, 2, 3)))
                classes.append(1)
        save_npz(target, x=stack_cubes(cubes), y=np.array(classes, np.uint8))
        print(f"patches {case.case_id}: {len(found)} candidates, {count} lesions, {sum(classes)} positive", flush=True)


def validation_table(data: Path, probabilities: Path, out: Path, low: float) -> None:
    """Per scan, the stored mask's counts and each candidate it does not keep: voxels, voxels on true lesions, the
    true lesions touched, and its cube."""
    out.mkdir(parents=True, exist_ok=True)
    settings = load_postprocessing(default_model_dir())
    for case in list_cases(data):
        target = out / f"{case.case_id}.npz"
        if target.exists():
            continue
        hu, truth, probability, affine = read_case(case, probabilities)
        lesions, count, diameters = true_lesions(truth, affine)
        kept = clean_mask((probability > settings.threshold).astype(np.uint8), settings, affine, None) > 0
        kept_labels, kept_count = label_lesions(kept)
        true_kept = len(set(np.unique(kept_labels[kept & truth]).tolist()) - {0})
        labels, found = candidates(probability, low)
        on_kept = set(np.unique(labels[kept]).tolist())
        boxes = ndimage.find_objects(labels)
        rows, cubes = [], []
        for index, centre, _, size in found:
            if index in on_kept:  # a component at the low threshold holds every stored lesion it touches
                continue
            box = boxes[index - 1]
            component = labels[box] == index
            touched = set(np.unique(lesions[box][component]).tolist())
            on_truth = int(np.count_nonzero(truth[box] & component))
            rows.append([size, on_truth] + [int(t in touched) for t in range(1, count + 1)])
            cubes.append(patch(hu, probability, affine, centre))
        touched_by_kept = set(np.unique(lesions[kept]).tolist())
        summary = {
            "truth": int(truth.sum()),
            "kept": int(kept.sum()),
            "kept_on_truth": int((kept & truth).sum()),
            "kept_false": kept_count - true_kept,
            "kept_touches": [int(t in touched_by_kept) for t in range(1, count + 1)],
            "diameters_mm": [float(d) for d in diameters],
        }
        save_npz(
            target,
            x=stack_cubes(cubes),
            rows=np.array(rows, np.int64).reshape(len(rows), 2 + count),
            summary=json.dumps(summary),
        )
        print(f"validation {case.case_id}: {count} lesions, {len(rows)} candidates not kept", flush=True)


def classifier() -> Classifier:
    return Classifier(
        in_shape=(2, PATCH, PATCH, PATCH),
        classes=1,
        channels=(16, 32, 64, 64),
        strides=(2, 2, 2, 2),
        num_res_units=1,
        norm="BATCH",
        dropout=0.2,
    )


def train(patches: Path, out: Path, epochs: int, seed: int) -> None:
    if out.exists():
        return
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    # "[!.]": not a hidden temporary file of write_atomic
    files = [np.load(path) for path in sorted(patches.glob("[!.]*.npz"))]
    x = torch.from_numpy(np.concatenate([f["x"] for f in files]))
    y = torch.from_numpy(np.concatenate([f["y"] for f in files])).float()
    positive, negative = torch.where(y == 1)[0], torch.where(y == 0)[0]
    print(f"train: {len(y)} cubes, {len(positive)} positive", flush=True)
    network = classifier()
    optimiser = torch.optim.AdamW(network.parameters(), 1e-3, weight_decay=1e-4)
    batch = 64
    steps = 2 * max(len(positive), len(negative)) // batch
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, 2e-3, total_steps=epochs * steps)
    loss_function = torch.nn.BCEWithLogitsLoss()
    for epoch in range(epochs):
        network.train()
        start, total = time.perf_counter(), 0.0
        for _ in range(steps):
            chosen = torch.cat(
                [
                    positive[torch.randint(len(positive), (batch // 2,))],
                    negative[torch.randint(len(negative), (batch // 2,))],
                ]
            )
            inputs = x[chosen].float()
            for axis in (2, 3, 4):
                if rng.random() < 0.5:
                    inputs = inputs.flip(axis)
            if rng.random() < 0.5:
                inputs = inputs.transpose(2, 3)  # a quarter turn in the axial plane, with the flips
            loss = loss_function(network(inputs)[:, 0], y[chosen])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total += loss.item()
        print(
            f"train epoch {epoch + 1}/{epochs}: loss {total / steps:.4f}, {time.perf_counter() - start:.0f} s",
            flush=True,
        )
    write_atomic(out, lambda stream: torch.save(network.state_dict(), stream), mode="wb")


def score(table: Path, weights: Path) -> dict:
    network = classifier()
    network.load_state_dict(torch.load(weights, weights_only=True))
    network.eval()
    scans = []
    for path in sorted(table.glob("[!.]*.npz")):
        stored = np.load(path)
        with torch.inference_mode():
            cubes = torch.from_numpy(stored["x"])
            scores = [torch.sigmoid(network(cubes[i : i + 128].float())[:, 0]) for i in range(0, len(cubes), 128)]
        scores = torch.cat(scores).numpy() if scores else np.zeros(0)
        scans.append((json.loads(str(stored["summary"])), stored["rows"], scores))
    touching = [rows[:, 2:].any(1) for _, rows, _ in scans]
    true = np.concatenate([scores[t] for (_, _, scores), t in zip(scans, touching, strict=True)])
    false = np.concatenate([scores[~t] for (_, _, scores), t in zip(scans, touching, strict=True)])
    auc = (
        float((true[:, None] > false[None]).mean() + 0.5 * (true[:, None] == false[None]).mean()) if len(true) else None
    )
    result = {"true_candidates": len(true), "false_candidates": len(false), "auc": auc, "grid": []}
    for minimum in (math.inf, *SCORE_GRID):
        dices, found, lesions, false_lesions = [], 0, 0, 0
        for summary, rows, scores in scans:
            accepted = rows[scores >= minimum]
            marked = summary["kept"] + int(accepted[:, 0].sum())
            on_truth = summary["kept_on_truth"] + int(accepted[:, 1].sum())
            touched = np.array(summary["kept_touches"], bool) | accepted[:, 2:].any(0)
            big = np.array(summary["diameters_mm"]) >= 5
            found += int((touched & big).sum())
            lesions += int(big.sum())
            false_lesions += summary["kept_false"] + int((~accepted[:, 2:].any(1)).sum())
            if summary["truth"]:
                dices.append(2 * on_truth / (marked + summary["truth"]))
        result["grid"].append(
            {
                "min_score": None if math.isinf(minimum) else minimum,
                "dice": round(float(np.mean(dices)), 4),
                "lesions_5mm_found": f"{found}/{lesions}",
                "false_lesions_per_scan": round(false_lesions / len(scans), 3),
            }
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-data", type=Path, required=True, help="synthetic scans to train the classifier on")
    parser.add_argument("--val-data", type=Path, required=True, help="the validation scans that choose")
    parser.add_argument("--work", type=Path, default=Path("runs/candidates/study"))
    parser.add_argument("--low", type=float, default=0.15, help="candidate threshold on the pair's probability")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=4646)
    args = parser.parse_args()
    write_probabilities(args.train_data, args.work / "probabilities" / "train", mirrored=False)
    write_probabilities(args.val_data, args.work / "probabilities" / "validation", mirrored=True)
    training_patches(args.train_data, args.work / "probabilities" / "train", args.work / "patches", args.low, args.seed)
    validation_table(args.val_data, args.work / "probabilities" / "validation", args.work / "validation", args.low)
    train(args.work / "patches", args.work / "classifier.pt", args.epochs, args.seed)
    result = score(args.work / "validation", args.work / "classifier.pt")
    (args.work / "score.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

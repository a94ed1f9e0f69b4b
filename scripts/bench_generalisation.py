"""Generalisation benchmark: a model on held-out full-size synthetic scans and on the real CTs of ../shared/real_ct/.

Held out: ``--cases`` full-size scans of the varied engine and varied acquisition (every tumour kind, 0.5-1.0 mm
pixels, 0.6-5 mm slices, a fifth tumour-free), drawn with ``--seed`` (7777: used by no training data, fixed set
or stream). Per scan: 3D Dice (tumour scans; nnU-Net convention), lesion sensitivity for true lesions of 5 mm or
more (equivalent diameter), and false lesions (predicted lesions touching no true lesion). Real CT: Dice against
the LIDC-IDRI-0001 readers' nodule mask, and the lesions found in the tumour-free thorax. The lesions of 5 mm or
more found are also counted by size band and, from the set's ``synth_truth.json``, by tumour kind, site and slice
thickness (``found_by``): run it on the validation scans (``--data runs/pretrained/validation_full``) to see where
a model fails without looking into the held-out set.

    python scripts/bench_generalisation.py                        # the shipped model
    python scripts/bench_generalisation.py --run runs/demo/runs/unet2d/fold_0 --out bench.json
    python scripts/bench_generalisation.py --data runs/pretrained/validation_full --cases 16 --seed 5555
    python scripts/bench_generalisation.py --min-slice-mm 2.5    # the network at another slice spacing
    python scripts/bench_generalisation.py --second-look-mm 1.25 # with a second pass on a finer grid

Targets (issue 8): mean per-case Dice >= 0.80, sensitivity >= 0.90 for lesions >= 5 mm, <= 0.5 false lesions per
scan; LIDC nodule Dice >= 0.6 and no false lesion in the tumour-free thorax.
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
from scipy import ndimage

from lung_tumor.data.msd import list_cases
from lung_tumor.data.synth import synthesize_dataset
from lung_tumor.evaluation.lesions import label_lesions
from lung_tumor.heap import freed_memory_kept
from lung_tumor.inference import Predictor
from lung_tumor.models import default_model_dir

MIN_DIAMETER_MM = 5.0
SIZE_BANDS_MM = (10.0, 20.0, 30.0)  # the lesions found are also counted by size band: < 10, < 20, < 30, >= 30 mm
REAL_CT = Path(__file__).resolve().parents[2] / "shared" / "real_ct"


def dice(prediction: np.ndarray, truth: np.ndarray) -> float | None:
    total = int(prediction.sum()) + int(truth.sum())
    return None if total == 0 else 2.0 * int((prediction & truth).sum()) / total


def size_band(diameter_mm: float) -> str:
    for high in SIZE_BANDS_MM:
        if diameter_mm < high:
            return f"< {high:g} mm"
    return f">= {SIZE_BANDS_MM[-1]:g} mm"


def lesion_counts(
    prediction: np.ndarray, truth: np.ndarray, spacing: tuple[float, ...], painted: dict | None = None
) -> dict:
    """True lesions of >= 5 mm found and missed, and predicted lesions touching no true lesion; with them, each true
    lesion of 5 mm or more (``lesions``): its equivalent diameter (size band), whether found, and where the synthetic
    truth (``painted``: the case's entry of ``synth_truth.json``) is known the kind and site of the painted tumour
    whose centre lies nearest the lesion's centroid, and the scan's slice thickness."""
    true_labels, n_true = label_lesions(truth)
    pred_labels, n_pred = label_lesions(prediction)
    voxel_mm3 = float(np.prod(spacing))
    hit_true = set(np.unique(true_labels[(pred_labels > 0) & (true_labels > 0)]).tolist())
    hit_pred = np.unique(pred_labels[(pred_labels > 0) & (true_labels > 0)]).size
    lesions = []
    for index, box in enumerate(ndimage.find_objects(true_labels), start=1):
        voxels = np.argwhere(true_labels[box] == index) + [s.start for s in box]
        diameter = float(np.cbrt(6.0 * len(voxels) * voxel_mm3 / math.pi))
        if diameter < MIN_DIAMETER_MM:
            continue
        lesion = {"diameter_mm": round(diameter, 1), "size": size_band(diameter), "found": index in hit_true}
        if painted:
            centre = voxels.mean(axis=0) * spacing
            nearest = min(
                painted["tumours"],
                key=lambda t: float(np.linalg.norm(np.array(t["centre_voxel"]) * spacing - centre)),
            )
            lesion.update(
                kind=nearest["kind"],
                site=nearest["location"],
                slice_mm=painted["acquisition"]["slice_thickness_mm"],
            )
        lesions.append(lesion)
    return {
        "lesions_5mm": len(lesions),
        "lesions_5mm_found": sum(lesion["found"] for lesion in lesions),
        "lesions_all": n_true,
        "lesions_all_found": len(hit_true),
        "false_lesions": n_pred - int(hit_pred),
        "lesions": lesions,
    }


def score_scan(predictor: Predictor, image: Path, truth: np.ndarray, painted: dict | None = None) -> dict:
    result = predictor.predict_file(image)
    prediction = np.asarray(result.mask) != 0
    voxel_mm3 = float(np.prod(result.spacing))
    return {
        "case": image.name,
        "dice": dice(prediction, truth) if truth.any() else None,
        "predicted_ml": round(prediction.sum() * voxel_mm3 / 1000, 2),
        "true_ml": round(truth.sum() * voxel_mm3 / 1000, 2),
        **lesion_counts(prediction, truth, result.spacing, painted),
    }


def breakdown(rows: list[dict]) -> dict[str, dict[str, str]]:
    """Lesions of 5 mm or more found, as 'found/all', by size band and, with the synthetic truth, by tumour kind,
    site and slice thickness."""
    lesions = [lesion for row in rows for lesion in row["lesions"]]
    table = {}
    for key in ("size", "kind", "site", "slice_mm"):
        groups: dict[str, list[bool]] = {}
        for lesion in lesions:
            if key in lesion:
                groups.setdefault(str(lesion[key]), []).append(lesion["found"])
        table[key] = {name: f"{sum(found)}/{len(found)}" for name, found in sorted(groups.items())}
    return table


def summarise(rows: list[dict]) -> dict:
    dices = [r["dice"] for r in rows if r["dice"] is not None]
    large = sum(r["lesions_5mm"] for r in rows)
    return {
        "scans": len(rows),
        "tumour_scans": len(dices),
        "dice_per_case_mean": round(float(np.mean(dices)), 4) if dices else None,
        "dice_per_case_median": round(float(np.median(dices)), 4) if dices else None,
        "sensitivity_5mm": round(sum(r["lesions_5mm_found"] for r in rows) / large, 4) if large else None,
        "lesions_5mm": large,
        "false_lesions_per_scan": round(sum(r["false_lesions"] for r in rows) / len(rows), 3),
        "false_lesions_in_tumour_free_scans": sum(r["false_lesions"] for r in rows if r["true_ml"] == 0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=None, help="model or run folder (default: the shipped model)")
    parser.add_argument("--data", type=Path, default=Path("runs/heldout_full"), help="held-out set (made if missing)")
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--seed", type=int, default=7777)
    parser.add_argument("--real-ct", type=Path, default=REAL_CT)
    parser.add_argument("--out", type=Path, default=None, help="also write the figures to this JSON file")
    parser.add_argument(
        "--min-slice-mm", type=float, default=None, help="the slice spacing the network sees (default: the model's)"
    )
    parser.add_argument(
        "--second-look-mm", type=float, default=None, help="a second pass at this pixel size (default: the model's)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    if not (args.data / "dataset.json").is_file():
        synthesize_dataset(
            args.data, cases=args.cases, size="full", seed=args.seed, variety="varied", acquisition="varied"
        )
    run = args.run or default_model_dir()
    predictor = Predictor(run, min_slice_mm=args.min_slice_mm, second_look_mm=args.second_look_mm)
    print(f"model: {run}  post-processing: {predictor.postprocessing.as_dict()}")
    started = time.monotonic()
    truth_file = args.data / "synth_truth.json"
    painted = json.loads(truth_file.read_text())["cases"] if truth_file.is_file() else {}
    rows = []
    cases = list_cases(args.data)[: args.cases]
    with freed_memory_kept(len(cases)):  # each scan reuses the memory the last one freed, as `evaluate` does
        for case in cases:
            truth = np.asarray(nib.load(case.label).dataobj) != 0
            rows.append(score_scan(predictor, case.image, truth, painted.get(case.case_id)))
            r = rows[-1]
            print(
                f"  {r['case']}: Dice {r['dice'] if r['dice'] is None else round(r['dice'], 3)}  "
                f"lesions >=5 mm {r['lesions_5mm_found']}/{r['lesions_5mm']}  false {r['false_lesions']}  "
                f"true {r['true_ml']} ml, predicted {r['predicted_ml']} ml"
            )
    held_out = summarise(rows)
    print(f"synthetic scans ({args.data}, seed {args.seed}): {held_out}  [{time.monotonic() - started:.0f} s]")
    found_by = breakdown(rows)
    for key, groups in found_by.items():
        print(f"  lesions >= 5 mm found, by {key}: " + ", ".join(f"{name} {count}" for name, count in groups.items()))

    real = {}
    lidc = args.real_ct / "lidc-idri-0001"
    if (lidc / "ct.nii.gz").is_file():
        truth = np.asarray(nib.load(lidc / "nodule_mask_2readers.nii.gz").dataobj) != 0
        real["lidc_idri_0001"] = score_scan(predictor, lidc / "ct.nii.gz", truth)
    thorax = args.real_ct / "thorax-no-tumour" / "ct.nii.gz"
    if thorax.is_file():
        shape = nib.load(thorax).shape
        real["thorax_no_tumour"] = score_scan(predictor, thorax, np.zeros(shape, dtype=bool))
    for name, row in real.items():
        print(f"real CT {name}: {row}")
    figures = {"model": str(run), "post_processing": predictor.postprocessing.as_dict(), "held_out": held_out}
    figures["found_by"] = found_by
    figures.update(per_scan=rows, real_ct=real)
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()

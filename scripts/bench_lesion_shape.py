"""Are a model's false lesions flat? Lesion shape against truth on labelled scans, and a flatness rule scored.

Each labelled scan of ``--data`` is segmented with the model's own post-processing (``postprocess.json``). For every
predicted lesion (26-connected) the depth ratio is its craniocaudal extent over its widest in-plane extent, in mm of
its bounding box; a lesion that reaches the first or last axial slice has none (the scan may cut it) and is never
dropped. The script prints the ratios of true and false lesions, then the mean per-case Dice (a tumour-free scan
scoring 1 when empty, as ``lung-tumor tune`` scores), lesion sensitivity and false lesions per scan when lesions
under each minimum ratio are dropped. Run it on validation scans, never on a held-out set, to choose a rule:

    python scripts/bench_lesion_shape.py --data runs/pretrained/validation_full
    python scripts/bench_lesion_shape.py --run runs/pretrained/runs/lesion/fold_0 --data runs/pretrained/validation_full
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
from scipy import ndimage

from lung_tumor.data.msd import list_cases
from lung_tumor.evaluation.evaluate import _load_truth
from lung_tumor.evaluation.lesions import label_lesions
from lung_tumor.inference import Predictor
from lung_tumor.models import default_model_dir

MIN_RATIOS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)


def depth_ratios(labels: np.ndarray, count: int, affine: np.ndarray) -> np.ndarray:
    """Per lesion ``1..count``: craniocaudal over widest in-plane extent; ``inf`` where the scan's ends cut it."""
    axial = int(np.argmax(np.abs(affine[2, :3])))
    spacing = np.sqrt((np.asarray(affine, dtype=float)[:3, :3] ** 2).sum(axis=0))
    ratios = np.full(count + 1, np.inf)
    for index, box in enumerate(ndimage.find_objects(labels, count), 1):
        if box is None or box[axial].start == 0 or box[axial].stop == labels.shape[axial]:
            continue
        extent = [(b.stop - b.start) * float(s) for b, s in zip(box, spacing, strict=True)]
        ratios[index] = extent[axial] / max(e for axis, e in enumerate(extent) if axis != axial)
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=None, help="model or run folder (default: the shipped model)")
    parser.add_argument("--data", type=Path, required=True, help="labelled scans in the MSD layout (validation)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    predictor = Predictor(args.run or default_model_dir())
    print(f"model: {args.run or default_model_dir()}  post-processing: {predictor.postprocessing.as_dict()}")
    scans = []
    for case in list_cases(args.data):
        if case.label is None:
            continue
        result = predictor.predict_file(case.image)
        truth = _load_truth(case, result.mask.shape, result.affine) != 0
        labels, count = label_lesions(result.mask)
        true_labels, true_count = label_lesions(truth)
        ratios = depth_ratios(labels, count, result.affine)
        voxels = np.bincount(labels.ravel(), minlength=count + 1)
        on_truth = (labels > 0) & truth
        hits = np.bincount(labels[on_truth], minlength=count + 1)
        pairs = np.unique(np.stack([labels[on_truth], true_labels[on_truth]]), axis=1)
        scans.append((ratios, voxels, hits, pairs, int(truth.sum()), true_count))
        true_ratios = [round(float(ratios[i]), 2) for i in range(1, count + 1) if hits[i]]
        false_ratios = [round(float(ratios[i]), 2) for i in range(1, count + 1) if not hits[i]]
        print(f"  {case.case_id}: depth ratios of true lesions {true_ratios}, of false lesions {false_ratios}")
    print("minimum ratio | Dice per case | sensitivity | false lesions per scan")
    for minimum in MIN_RATIOS:
        dices, detected, true, false = [], 0, 0, 0
        for ratios, voxels, hits, pairs, truth_voxels, true_count in scans:
            kept = ratios >= minimum
            kept[0] = False
            total = int(voxels[kept].sum()) + truth_voxels
            dices.append(1.0 if total == 0 else 2.0 * int(hits[kept].sum()) / total)
            touching = pairs[:, kept[pairs[0]]]
            detected += np.unique(touching[1]).size
            true += true_count
            false += int(kept.sum()) - np.unique(touching[0]).size
        sensitivity = detected / true if true else float("nan")
        print(f"{minimum:g} | {np.mean(dices):.3f} | {sensitivity:.2f} | {false / len(scans):.2f}")


if __name__ == "__main__":
    main()

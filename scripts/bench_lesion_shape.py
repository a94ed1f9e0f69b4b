"""Are a model's false lesions flat? The depth ratio of true and false lesions on labelled scans.

Each labelled scan of ``--data`` is segmented with the model's own post-processing (``postprocess.json``). For every
predicted lesion (26-connected) the depth ratio is its craniocaudal extent over its widest in-plane extent, in mm of
its bounding box (:func:`lung_tumor.inference.lesion_depth_ratios`); a lesion that reaches the first or last axial
slice has none (the scan may cut it). The script prints the ratios of the lesions that touch the truth and of those
that do not. ``lung-tumor tune`` scores minimum ratios (``min_depth_ratio``) beside the other settings; this shows
why they help. Run it on validation scans, never on a held-out set:

    python scripts/bench_lesion_shape.py --data runs/pretrained/validation_full
    python scripts/bench_lesion_shape.py --run runs/pretrained/runs/lesion/fold_0 --data runs/pretrained/validation_full
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from lung_tumor.data.msd import list_cases
from lung_tumor.evaluation.evaluate import _load_truth
from lung_tumor.evaluation.lesions import label_lesions
from lung_tumor.inference import Predictor, lesion_depth_ratios
from lung_tumor.models import default_model_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=None, help="model or run folder (default: the shipped model)")
    parser.add_argument("--data", type=Path, required=True, help="labelled scans in the MSD layout (validation)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    predictor = Predictor(args.run or default_model_dir(), min_depth_ratio=0.0)  # every lesion, flat ones too
    print(f"model: {args.run or default_model_dir()}  post-processing: {predictor.postprocessing.as_dict()}")
    true_all, false_all = [], []
    for case in list_cases(args.data):
        if case.label is None:
            continue
        result = predictor.predict_file(case.image)
        truth = _load_truth(case, result.mask.shape, result.affine) != 0
        labels, count = label_lesions(result.mask)
        ratios = lesion_depth_ratios(labels, count, result.affine)
        hits = np.bincount(labels[(labels > 0) & truth], minlength=count + 1)
        true_ratios = [round(float(ratios[i]), 2) for i in range(1, count + 1) if hits[i]]
        false_ratios = [round(float(ratios[i]), 2) for i in range(1, count + 1) if not hits[i]]
        true_all += true_ratios
        false_all += false_ratios
        print(f"  {case.case_id}: depth ratios of true lesions {true_ratios}, of false lesions {false_ratios}")
    for name, ratios in (("true", true_all), ("false", false_all)):
        finite = [r for r in ratios if np.isfinite(r)]
        quartiles = np.percentile(finite, [0, 25, 50, 75, 100]).round(2).tolist() if finite else []
        print(
            f"{name} lesions: {len(ratios)} ({len(ratios) - len(finite)} cut by the scan); "
            f"ratio min/q1/median/q3/max {quartiles}"
        )


if __name__ == "__main__":
    main()

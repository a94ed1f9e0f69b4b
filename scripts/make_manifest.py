"""Build ``data_manifest.json`` from the official Task06_Lung ``dataset.json`` and the release's file list.

Usage: python scripts/make_manifest.py ../shared/msd/Task06_Lung data_manifest.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lung_tumor.data.manifest import FOLD_SEED, NUM_FOLDS, make_folds
from lung_tumor.data.msd import case_id_from_path


def build_manifest(task_dir: Path) -> dict:
    dataset = json.loads((task_dir / "dataset.json").read_text())
    files = {f["path"]: f for f in json.loads((task_dir / "files.json").read_text())["files"]}
    training = sorted(case_id_from_path(item["image"]) for item in dataset["training"])
    test = sorted(case_id_from_path(entry) for entry in dataset["test"])

    def entry(path: str) -> dict:
        record = files[path]
        return {"path": path, "size": record["size"], "sha256": record["sha256"]}

    folds = make_folds(training, NUM_FOLDS, FOLD_SEED)
    return {
        "name": "Task06_Lung",
        "description": "Medical Segmentation Decathlon lung task: case ids, files, labels and fixed folds",
        "labels": dataset["labels"],
        "modality": dataset["modality"],
        "num_training": len(training),
        "num_test": len(test),
        "training": [
            {
                "case": c,
                "image": entry(f"./imagesTr/{c}.nii.gz"),
                "label": entry(f"./labelsTr/{c}.nii.gz"),
            }
            for c in training
        ],
        "test": [{"case": c, "image": entry(f"./imagesTs/{c}.nii.gz")} for c in test],
        "folds_note": f"patient-level {NUM_FOLDS}-fold cross-validation, seed {FOLD_SEED}; "
        "no case appears in two validation folds",
        "folds": [
            {"fold": k, "validation": v, "training": sorted(set(training) - set(v))} for k, v in enumerate(folds)
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task_dir", type=Path)
    parser.add_argument("output", type=Path)
    args = parser.parse_args()
    args.output.write_text(json.dumps(build_manifest(args.task_dir), indent=1) + "\n")


if __name__ == "__main__":
    main()

"""Demo-config quality on held-out synthetic cases: train fold 0, score a separate test set per case in 3D.

    python scripts/bench_quality.py --name base
    python scripts/bench_quality.py --name one_neighbour --set context_slices=1 --set training.epochs=44
    python scripts/bench_quality.py --name more_data --cases 48
    python scripts/bench_quality.py --name every_case --fold all

Writes (or reuses) ``--cases`` small synthetic training cases of seed 0 and ``--held-out`` labelled cases
of seed 1 under ``--work``, trains ``configs/demo.yaml`` (with the ``--set`` overrides) on ``--fold`` (0 by
default), evaluates the best checkpoint on every held-out case, prints one JSON line and appends it to
``WORK/results.jsonl``. The fold's 4 validation cases choose the checkpoint; with ``--fold all`` every case trains
and the last checkpoint is scored. The held-out cases are never seen before scoring.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from lung_tumor.config import PreprocessConfig, load_config
from lung_tumor.data.manifest import parse_fold
from lung_tumor.demo import ensure_synthetic_data
from lung_tumor.evaluation.evaluate import evaluate_run
from lung_tumor.preprocess import data_section, preprocess_dataset
from lung_tumor.training.trainer import train_from_config

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="run name (a finished run of this name is reused)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override key=value")
    parser.add_argument("--cases", type=int, default=16, help="synthetic training cases (seed 0)")
    parser.add_argument("--held-out", type=int, default=20, help="held-out labelled cases (seed 1)")
    parser.add_argument("--fold", type=parse_fold, default=0, help="fold to train, or 'all' (every case)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/lung_tumor_bench_quality"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    data, held_out = args.work / f"data{args.cases}", args.work / f"held_out{args.held_out}"
    ensure_synthetic_data(data, cases=args.cases, seed=0)
    ensure_synthetic_data(held_out, cases=args.held_out, seed=1)
    preprocess = sorted(o for o in args.overrides if o.startswith("preprocess."))
    cache = args.work / ("cache_" + ("_".join(o.split("=", 1)[1] for o in preprocess) or "default") + f"_{args.cases}")
    overrides = [
        f"data.root={data}",
        f"data.cache_dir={cache}",
        f"output_dir={args.work / 'runs'}",
        f"run_name={args.name}",
        f"fold={json.dumps(args.fold)}",
        *args.overrides,
    ]
    config = load_config(CONFIG, overrides)
    root, cache_dir = data_section(config)
    preprocess_dataset(root, cache_dir, PreprocessConfig.from_dict(config.get_parsed_content("preprocess")))
    run = args.work / "runs" / args.name / f"fold_{args.fold}"
    finished = run / "metadata.json"
    if finished.is_file() and json.loads(finished.read_text()).get("status") == "finished":
        metadata = json.loads(finished.read_text())
    else:
        metadata = train_from_config(config)
    summary = evaluate_run(run, held_out, all_cases=True, output=run / "evaluation_held_out", pictures=False)
    result = {
        "name": args.name,
        "overrides": args.overrides,
        "training_cases": len(metadata["train_cases"]),
        "training_seconds": metadata["seconds"],
        "epochs": metadata["epochs"],
        "amp": metadata["amp"],
        "fold": args.fold,
        "validation_dice_best": None if metadata["best_metric"] is None else round(metadata["best_metric"], 3),
        "best_epoch": metadata["best_metric_epoch"],
        "held_out_cases": summary["cases"],
        "held_out_dice_per_case_mean": round(summary["dice_per_case_mean"], 3),
        "held_out_dice_per_case_median": round(summary["dice_per_case_median"], 3),
        "held_out_dice_pooled": round(summary["dice_pooled"], 3),
        "held_out_lesion_sensitivity": round(summary["lesion_sensitivity_pooled"], 3),
        "held_out_false_positives_per_case": round(summary["lesion_false_positives_per_case"], 2),
    }
    print(json.dumps(result))
    with open(args.work / "results.jsonl", "a") as handle:
        handle.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()

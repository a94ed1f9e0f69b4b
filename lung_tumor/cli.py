"""The ``lung-tumor`` command: thin argument parsing around plain Python functions.

Each sub-command imports its module only when it runs, so ``lung-tumor --help`` stays fast.
A :class:`~lung_tumor.errors.LungTumorError` becomes one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from lung_tumor.errors import LungTumorError

log = logging.getLogger("lung_tumor")

OVERWRITE_HELP = "replace existing output files that lung-tumor did not write (an input is never replaced)"


def _synth(args: argparse.Namespace) -> None:
    from lung_tumor.data.synth import synthesize_dataset

    synthesize_dataset(
        args.out,
        cases=args.cases,
        size=args.size,
        seed=args.seed,
        test_cases=args.test_cases,
        acquisition=args.acquisition,
        overwrite=args.overwrite,
        variety=args.variety,
        workers=args.workers,
        max_minutes=args.max_minutes,
    )


def _verify(args: argparse.Namespace) -> int:
    from lung_tumor.data.verify import verify_dataset

    problems = verify_dataset(args.root, checksums=args.checksums, manifest_path=args.manifest)
    return 1 if problems else 0


def _preprocess(args: argparse.Namespace) -> None:
    from lung_tumor.preprocess import preprocess_from_config

    preprocess_from_config(args.config, overrides=args.set)


def _fold(value: str) -> int | str:
    from lung_tumor.data.manifest import parse_fold

    try:
        return parse_fold(value)
    except LungTumorError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _train(args: argparse.Namespace) -> None:
    from lung_tumor.training.trainer import train_from_config

    train_from_config(args.config, fold=args.fold, resume=args.resume, overrides=args.set)


def _compare(args: argparse.Namespace) -> None:
    from lung_tumor.training.compare import compare_networks

    compare_networks(args.config, fold=args.fold, networks=args.networks, overrides=args.set)


def _predict(args: argparse.Namespace) -> None:
    from lung_tumor.inference import predict

    predict(
        args.run,
        args.input,
        output=args.output,
        threshold=args.threshold,
        min_lesion_mm3=args.min_lesion_mm3,
        lung_mask=args.lung_mask,
        flip_tta=args.flip_tta,
        min_depth_ratio=args.min_depth_ratio,
        min_slice_mm=args.min_slice_mm,
        second_look_mm=args.second_look_mm,
        second_look_threshold=args.second_look_threshold,
        second_look_support=args.second_look_support,
        save_probabilities=args.probabilities,
        report=not args.no_report,
        html=not args.no_html,
        overwrite=args.overwrite,
        fail_fast=args.fail_fast,
        on_error=_print_error,
        precision=args.precision,
    )


def _print_error(err: LungTumorError) -> None:
    """One failing input of a batch: the same one line as a fatal error (above the progress bar); the batch goes on."""
    from tqdm import tqdm

    tqdm.write(f"lung-tumor: error: {err}", file=sys.stderr)


def _tune(args: argparse.Namespace) -> None:
    from lung_tumor.evaluation.tune import tune_run

    tune_run(
        args.run,
        args.data,
        fold=args.fold,
        cases=args.cases,
        overwrite=args.overwrite,
        all_cases=args.all,
        min_slice_mm=args.min_slice_mm,
    )


def _export(args: argparse.Namespace) -> None:
    if len(args.run) > 1:
        from lung_tumor.ensemble import export_ensemble

        if args.checkpoint != "best":
            raise LungTumorError("an ensemble takes each run's best checkpoint: leave out --checkpoint", args.out)
        export_ensemble(args.run, args.out, overwrite=args.overwrite)
        return
    from lung_tumor.export import export_model

    export_model(args.run[0], args.out, checkpoint=args.checkpoint, overwrite=args.overwrite)


def _evaluate(args: argparse.Namespace) -> None:
    from lung_tumor.evaluation.evaluate import evaluate_run

    evaluate_run(
        args.run,
        args.data,
        fold=args.fold,
        cases=args.cases,
        output=args.output,
        pictures=not args.no_pictures,
        all_cases=args.all,
        overwrite=args.overwrite,
    )


def _visualize(args: argparse.Namespace) -> None:
    from lung_tumor.visualize import visualize_command

    visualize_command(
        image=args.image,
        label=args.label,
        prediction=args.prediction,
        run=args.run,
        output=args.output,
        overwrite=args.overwrite,
    )


def _followup(args: argparse.Namespace) -> None:
    from lung_tumor.followup import followup

    followup(
        args.baseline,
        args.followup,
        args.output,
        baseline_image=args.baseline_image,
        followup_image=args.followup_image,
        baseline_date=args.baseline_date,
        followup_date=args.followup_date,
        match_mm=args.match_mm,
        overwrite=args.overwrite,
    )


def _demo(args: argparse.Namespace) -> None:
    from lung_tumor.demo import run_demo

    run_demo(args.out, minutes=args.minutes)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lung-tumor", description="Lung tumour segmentation on chest CT.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", required=True, type=Path, help="YAML config (see configs/)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")

    p = commands.add_parser("synth", help="write synthetic chest CT in the MSD Task06_Lung layout")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--cases", type=int, default=16, help="labelled training cases")
    p.add_argument("--test-cases", type=int, default=2, help="unlabelled cases in imagesTs/")
    p.add_argument("--size", choices=("small", "full"), default="small")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--variety",
        choices=("default", "varied"),
        default="default",
        help="varied: varied anatomy, findings that are not tumour, every tumour kind, a fifth tumour-free",
    )
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.add_argument(
        "--acquisition",
        choices=("default", "varied"),
        default="default",
        help="default: one L,P,S int16 grid per size; varied: each case acquired with a scanner and protocol "
        "drawn from the seed (spacing, slices, kernel, noise, padding, cropped field, slab, orientation, rescale)",
    )
    p.add_argument(
        "--workers", type=int, default=1, help="processes making cases side by side (same files whatever the number)"
    )
    p.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="stop starting cases after this long; the dataset keeps the first cases finished (as --cases K would)",
    )
    p.set_defaults(func=_synth)

    data = commands.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("verify", help="check a dataset folder against its dataset.json and the manifest")
    p.add_argument("--root", required=True, type=Path)
    p.add_argument("--checksums", action="store_true", help="also compare sha256 with the manifest (slow)")
    p.add_argument("--manifest", type=Path, default=None, help="data_manifest.json (default: the repository's)")
    p.set_defaults(func=_verify)

    p = commands.add_parser("preprocess", help="turn a dataset into the 2D slice cache")
    with_config(p)
    p.set_defaults(func=_preprocess)

    p = commands.add_parser("train", help="train a network on one fold")
    with_config(p)
    p.add_argument(
        "--fold",
        type=_fold,
        default=None,
        help="cross-validation fold, or 'all' for every case (default: the config's)",
    )
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    p.set_defaults(func=_train)

    p = commands.add_parser("compare", help="train and evaluate several networks on the same fold")
    with_config(p)
    p.add_argument("--fold", type=int, default=None)
    p.add_argument("--networks", nargs="+", required=True, help="overlay names in configs/networks/ or YAML paths")
    p.set_defaults(func=_compare)

    p = commands.add_parser("predict", help="segment whole CT volumes into NIfTI masks and tumour reports")
    p.add_argument("--run", type=Path, default=None, help="run, model or ensemble folder (default: the shipped model)")
    p.add_argument("--input", required=True, type=Path, help="NIfTI file, folder of NIfTI files, or DICOM folder")
    p.add_argument(
        "--output",
        type=Path,
        default=None,
        help="mask file or folder (default: RUN/predictions/, or ./predictions/ with the shipped model)",
    )
    stored = " (default: the run's postprocess.json, from lung-tumor tune; else %s)"
    for flag, meaning, default in (
        ("--threshold", "tumour probability cut", "0.5"),
        ("--min-lesion-mm3", "drop lesions smaller than this", "0"),
        (
            "--min-depth-ratio",
            "drop lesions whose head-foot extent is under this fraction of their in-plane extent",
            "0",
        ),
        ("--min-slice-mm", "average closer slices to this spacing before the network (0: the scan's own)", "0"),
        (
            "--second-look-mm",
            "a second network pass at this finer pixel size; its lesions that the first pass vouches for are added "
            "(0: none)",
            "0",
        ),
        ("--second-look-threshold", "the second pass's probability cut", "0.7"),
        ("--second-look-support", "the first pass's probability a second-look lesion must reach inside it", "0.5"),
    ):
        p.add_argument(flag, type=float, default=None, help=meaning + stored % default)
    p.add_argument(
        "--lung-mask",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep only lesions in or within 10 mm of the lungs" + stored % "off",
    )
    p.add_argument(
        "--flip-tta",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="average the scan's probabilities with its in-plane mirror images" + stored % "off",
    )
    p.add_argument("--probabilities", action="store_true", help="also write the probability map")
    p.add_argument("--no-report", action="store_true", help="skip the tumour spread report (JSON, text and HTML)")
    p.add_argument("--no-html", action="store_true", help="skip the one-page HTML report (CASE_report.html)")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.add_argument("--fail-fast", action="store_true", help="stop at the first scan that fails (default: go on)")
    p.add_argument(
        "--precision",
        choices=("auto", "float32", "bfloat16"),
        default="auto",
        help="auto: bfloat16 if the run trained with training.amp and this CPU computes it natively, else float32",
    )
    p.set_defaults(func=_predict)

    p = commands.add_parser(
        "tune", help="choose a run's post-processing on its validation cases (writes RUN/postprocess.json)"
    )
    p.add_argument("--run", required=True, type=Path)
    p.add_argument("--data", type=Path, default=None, help="dataset folder (default: the run config's data.root)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--fold", type=int, default=None, help="this fold's validation cases (default: the run's)")
    which.add_argument("--cases", nargs="+", default=None, help="these case ids instead")
    which.add_argument("--all", action="store_true", help="every labelled case of --data (a validation set of its own)")
    p.add_argument(
        "--min-slice-mm",
        type=float,
        default=None,
        help="the slice spacing the network sees, kept in the choice (default: the run's stored one, else 0)",
    )
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.set_defaults(func=_tune)

    p = commands.add_parser(
        "export", help="copy a run's weights, config and post-processing into a model folder (several: an ensemble)"
    )
    p.add_argument(
        "--run",
        required=True,
        type=Path,
        action="append",
        help="training run folder; give it two or more times for an ensemble that averages their probabilities",
    )
    p.add_argument("--out", required=True, type=Path, help="model folder to write")
    p.add_argument("--checkpoint", default="best", help="best, last or a checkpoint file (default: best)")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.set_defaults(func=_export)

    p = commands.add_parser("evaluate", help="score a run per case in 3D (MSD / nnU-Net style)")
    p.add_argument("--run", required=True, type=Path)
    p.add_argument("--data", required=True, type=Path, help="MSD-layout dataset folder")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--fold", type=int, default=None, help="this fold's validation cases (default: the run's)")
    which.add_argument("--cases", nargs="+", default=None, help="these case ids")
    which.add_argument("--all", action="store_true", help="every labelled case of --data (a held-out test set)")
    p.add_argument("--output", type=Path, default=None)
    p.add_argument("--no-pictures", action="store_true")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.set_defaults(func=_evaluate)

    p = commands.add_parser("visualize", help="PNG overlays, montages and training curves")
    p.add_argument("--image", type=Path, default=None)
    p.add_argument("--label", type=Path, default=None)
    p.add_argument("--prediction", type=Path, default=None)
    p.add_argument("--run", type=Path, default=None, help="run folder: plot its training curves")
    p.add_argument("--output", required=True, type=Path)
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.set_defaults(func=_visualize)

    p = commands.add_parser(
        "followup", help="compare two predictions of one patient: matched lesions, RECIST response, doubling time"
    )
    p.add_argument("--baseline", required=True, type=Path, help="baseline mask (its _report.json beside it) or folder")
    p.add_argument("--followup", required=True, type=Path, help="follow-up mask or prediction folder")
    p.add_argument(
        "--baseline-image", type=Path, default=None, help="baseline CT: with --followup-image, aligns the scans"
    )
    p.add_argument("--followup-image", type=Path, default=None, help="follow-up CT")
    p.add_argument("--baseline-date", default=None, metavar="YYYY-MM-DD", help="baseline scan date")
    p.add_argument("--followup-date", default=None, metavar="YYYY-MM-DD", help="follow-up scan date")
    p.add_argument("--match-mm", type=float, default=15.0, help="largest centroid distance of a lesion match")
    p.add_argument("--output", required=True, type=Path, help="folder for followup.json and followup.txt")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.set_defaults(func=_followup)

    p = commands.add_parser("demo", help="the whole job on synthetic data: synth, preprocess, train, evaluate, predict")
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--minutes", type=float, default=None, help="training time budget (default: the config's)")
    p.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        status = args.func(args)
    except LungTumorError as err:
        print(f"lung-tumor: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("lung-tumor: interrupted", file=sys.stderr)
        return 130
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())

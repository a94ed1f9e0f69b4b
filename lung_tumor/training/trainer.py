"""``lung-tumor train``: a MONAI ``SupervisedTrainer`` and ``SupervisedEvaluator`` on one fold of the slice cache.

The same code runs on one device, under ``torchrun`` (several GPUs or nodes) or as spawned CPU processes,
through ``ignite.distributed``; only rank 0 writes logs, checkpoints and metadata. The run folder layout
is described in :mod:`lung_tumor.training.run`.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

import ignite
import ignite.distributed as idist
import monai
import torch
from ignite.engine import Events
from ignite.handlers import ProgressBar
from ignite.metrics import Average
from monai.bundle import ConfigParser
from monai.data import DataLoader, DistributedSampler
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import (
    CheckpointLoader,
    ConfusionMatrix,
    EarlyStopHandler,
    IgniteMetricHandler,
    LrScheduleHandler,
    StatsHandler,
    TensorBoardStatsHandler,
    ValidationHandler,
    from_engine,
    stopping_fn_from_metric,
)
from monai.inferers import SimpleInferer
from monai.metrics import DiceMetric
from monai.transforms import Activationsd, AsDiscreted, Compose
from monai.utils import CommonKeys, set_determinism
from torch.utils.tensorboard import SummaryWriter

import lung_tumor
from lung_tumor.cache import SliceCache, SliceDataset
from lung_tumor.config import StreamConfig, TrainingConfig, check_balance, load_config, validate_config
from lung_tumor.cores import network_threads
from lung_tumor.data.manifest import MANIFEST_PATH, fold_split, load_manifest, parse_fold
from lung_tumor.errors import LungTumorError
from lung_tumor.io import write_json
from lung_tumor.lock import folder_lock
from lung_tumor.provenance import input_sha256
from lung_tumor.training.data import (
    SeededDraws,
    VolumeDataset,
    build_augmentation,
    build_sampler,
    init_loader_worker,
    lesion_shares,
    tumour_weights,
)
from lung_tumor.training.losses import build_loss
from lung_tumor.training.run import (
    AutocastInferer,
    RandomState,
    SliceStackInferer,
    context_slices,
    cpu_bf16_supported,
    load_initial_weights,
    run_folder,
    save_checkpoint,
    save_config,
    saved_config_hash,
)
from lung_tumor.training.stream import MixedDraws, MixedSliceDataset, SyntheticSliceStream, split_draws

log = logging.getLogger(__name__)

KEY_METRIC = "val_dice"
# MONAI's StatsHandler gives a logger it creates its own console handler and stops it propagating,
# so the epoch statistics use a logger of their own rather than this module's
STATS_LOGGER = "lung_tumor.training.stats"


def train_from_config(
    config: str | Path | ConfigParser,
    fold: int | None = None,
    resume: bool = False,
    overrides: list[str] | tuple[str, ...] = (),
    nproc_per_node: int | None = None,
    backend: str | None = None,
) -> dict[str, Any]:
    """Train the config's ``network_def`` on one fold and return the run's metadata.

    Args:
        config: a config file or an already loaded ``ConfigParser``.
        fold: cross-validation fold (default: the config's ``fold``, else 0); ``"all"`` trains on every
            labelled case without validation, and the run's model is its last checkpoint.
        resume: continue from the run folder's ``checkpoints/last.pt``.
        overrides: ``key=value`` strings applied to a config file.
        nproc_per_node: spawn this many processes here (e.g. 2 CPU processes with ``gloo``); under
            ``torchrun`` leave it ``None``: the processes already exist.
        backend: ``gloo`` or ``nccl``; by default ``nccl`` on GPUs or ``gloo`` on CPUs when the
            environment (``torchrun``) or ``nproc_per_node`` asks for several processes, else none.

    Returns:
        The content of ``metadata.json``.

    Raises:
        LungTumorError: bad config values, missing slice cache, or ``resume`` without a checkpoint.
    """
    if isinstance(config, ConfigParser):
        parser = config
        validate_config(parser, getattr(parser, "config_path", None))
    else:
        parser = load_config(config, overrides)
    fold = parse_fold(fold if fold is not None else parser.get("fold", 0))
    parser["fold"] = fold
    # everything the processes will build is built once here, so that a bad value fails before any process starts
    # and before the run folder is touched
    run_dir = run_folder(parser, fold)
    cache = SliceCache(_cache_dir(parser))
    network = _check_network_accepts(parser, cache.preprocess.image_size)
    init_from = TrainingConfig.from_dict(parser.get("training")).init_from
    if init_from is not None and not resume:  # a resume continues from the run's own weights
        load_initial_weights(network, init_from)
    build_augmentation(parser.get("augmentation"), cache.preprocess.image_size)
    sampler = _sampler_section(parser)
    tumour_weights([True, False], sampler.get("tumour_weight"), sampler.get("tumour_fraction"))
    check_balance(sampler.get("balance", "slice"))
    build_loss(parser.get("loss"))
    StreamConfig.from_dict(parser.get_parsed_content("stream", default=None))
    optimizer = build_optimizer(parser, network.parameters())
    scheduler = build_scheduler(parser, optimizer)
    distributed = (nproc_per_node or 1) > 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1
    if backend is None and distributed:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    # the launching process holds the run folder for the whole run (spawned ranks included); under torchrun,
    # where every rank launches itself, global rank 0 does (torchrun stops the others if it refuses)
    holds_lock = int(os.environ.get("RANK", "0")) == 0
    with folder_lock(run_dir, what="run folder") if holds_lock else contextlib.nullcontext():
        last = run_dir / "checkpoints" / "last.pt"
        if resume and not last.is_file():
            raise LungTumorError("cannot resume: no checkpoints/last.pt in the run folder", run_dir)
        if not resume and last.is_file():
            raise LungTumorError(
                "run folder already has a checkpoint; pass --resume or choose --set run_name=...", run_dir
            )
        if resume:
            check_resumable(run_dir, network, optimizer, scheduler)
        with idist.Parallel(backend=backend, nproc_per_node=nproc_per_node) as parallel:
            parallel.run(_train_process, parser.get(), resume)
        return _read_json(run_dir / "metadata.json")


def check_resumable(
    run_dir: Path, network: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any | None
) -> None:
    """Load ``checkpoints/last.pt`` into freshly built objects, so that a resume that cannot work fails first.

    Raises:
        LungTumorError: ``last.pt`` is unreadable, lacks a part, or does not fit the config's network, optimizer
            or scheduler; or ``metadata.json`` is unreadable.
    """
    last = run_dir / "checkpoints" / "last.pt"
    try:
        state = torch.load(last, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, corrupt or foreign: one line, and the run folder stays as it was
        raise LungTumorError(f"cannot resume: checkpoint unreadable ({type(err).__name__})", last) from None
    parts = {"network": network, "optimizer": optimizer, "scheduler": scheduler, "trainer": None, "run_state": None}
    for name, target in parts.items():
        if target is None and name == "scheduler":
            continue
        if not isinstance(state, dict) or name not in state:
            raise LungTumorError(f"cannot resume: checkpoint has no {name} state", last)
        if target is not None:
            try:
                target.load_state_dict(state[name])
            except Exception as err:
                raise LungTumorError(
                    f"cannot resume: checkpoint's {name} state does not fit the config's {name} "
                    f"({str(err).splitlines()[0][:200]})",
                    last,
                ) from None
    metadata = run_dir / "metadata.json"
    if metadata.is_file():
        try:
            _read_json(metadata)
        except (OSError, ValueError) as err:
            raise LungTumorError(f"cannot resume: unreadable ({type(err).__name__})", metadata) from None


def _check_network_accepts(parser: ConfigParser, image_size: int) -> torch.nn.Module:
    """Build ``network_def`` once and pass a batch of cache-sized slices through it, before any process starts.

    MONAI's ``UNet`` and ``AttentionUnet``, for instance, need sizes divisible by the product of their strides;
    a mismatch would otherwise surface as a tensor-shape error deep inside the first training step.
    """
    try:
        network = parser.get_parsed_content("network_def", instantiate=True)
    except Exception as err:
        raise LungTumorError(f"network_def: cannot build it ({str(err).splitlines()[0]})") from None
    channels = 2 * context_slices(parser) + 1
    network.eval()
    try:
        with torch.no_grad():
            out = network(torch.zeros(2, channels, image_size, image_size))
    except Exception as err:
        raise LungTumorError(
            f"network_def {type(network).__name__} does not accept {channels}-channel {image_size}x{image_size} "
            f"slices of the cache ({str(err).splitlines()[0]}); choose preprocess.image_size to suit it"
        ) from None
    if tuple(out.shape[-2:]) != (image_size, image_size):
        raise LungTumorError(
            f"network_def {type(network).__name__} maps {image_size}x{image_size} slices to "
            f"{tuple(out.shape[-2:])}; the output must keep the slice size"
        )
    return network


def _cache_dir(parser: ConfigParser) -> Path:
    """The config's ``data.cache_dir`` (the slice cache written by ``lung-tumor preprocess``)."""
    if "cache_dir" not in (parser.get("data") or {}):
        raise LungTumorError("config has no data.cache_dir (the slice cache written by `lung-tumor preprocess`)")
    return Path(parser.get_parsed_content("data::cache_dir"))


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _build_callable(parser: ConfigParser, key: str) -> Any:
    """A ``_mode_: callable`` section (optimizer, scheduler) as a factory, or None when absent."""
    if parser.get(key) is None:
        return None
    try:
        factory = parser.get_parsed_content(key, instantiate=True)
    except Exception as err:
        raise LungTumorError(f"{key}: cannot build it ({str(err).splitlines()[0]})") from None
    if not callable(factory):
        raise LungTumorError(f"{key}: expected a mapping with _target_ and '_mode_: callable'")
    return factory


def build_optimizer(parser: ConfigParser, parameters: Any) -> torch.optim.Optimizer:
    """The config's ``optimizer`` over ``parameters`` (Adam at 1e-4 without one).

    Raises:
        LungTumorError: the optimizer refuses its arguments, or its learning rate is not positive.
    """
    factory = _build_callable(parser, "optimizer")
    if factory is None:
        return torch.optim.Adam(parameters, lr=1e-4)
    try:
        optimizer = factory(parameters)
    except Exception as err:  # torch's own checks: a negative lr, betas out of range, an unknown argument
        raise LungTumorError(f"optimizer: cannot build it ({str(err).splitlines()[0]})") from None
    lr = optimizer.param_groups[0].get("lr")
    if not isinstance(lr, int | float | torch.Tensor) or not float(lr) > 0:
        raise LungTumorError(f"optimizer.lr must be a positive number, got {lr!r}")
    return optimizer


def build_scheduler(parser: ConfigParser, optimizer: torch.optim.Optimizer) -> Any | None:
    """The config's ``scheduler`` on ``optimizer``, or ``None`` without one.

    Raises:
        LungTumorError: the scheduler refuses its arguments.
    """
    factory = _build_callable(parser, "scheduler")
    if factory is None:
        return None
    try:
        return factory(optimizer)
    except Exception as err:
        raise LungTumorError(f"scheduler: cannot build it ({str(err).splitlines()[0]})") from None


def _sampler_section(parser: ConfigParser) -> dict[str, Any]:
    return parser.get_parsed_content("sampler", default=None) or {"tumour_weight": 1.0}


class _RunState:
    """What a resumed run needs beyond the engines: best metric so far, early-stopping counter, random state."""

    def __init__(self, early_stop: EarlyStopHandler | None) -> None:
        self.best_metric = -1.0
        self.best_epoch = 0
        self.best_per_case: dict[str, float] = {}
        self.validated_iteration = -1
        self.early_stop = early_stop
        self.random = RandomState()

    def state_dict(self) -> dict[str, Any]:
        stopper = self.early_stop._handler if self.early_stop is not None else None
        return {
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "best_per_case": dict(self.best_per_case),
            "validated_iteration": self.validated_iteration,
            "early_stop_counter": stopper.counter if stopper is not None else 0,
            "early_stop_best": stopper.best_score if stopper is not None and stopper.best_score is not None else None,
            "random": self.random.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_metric = float(state["best_metric"])
        self.best_epoch = int(state["best_epoch"])
        self.best_per_case = dict(state["best_per_case"])
        self.validated_iteration = int(state["validated_iteration"])
        stopper = self.early_stop._handler if self.early_stop is not None else None
        if stopper is not None:
            stopper.counter = int(state["early_stop_counter"])
            stopper.best_score = state["early_stop_best"]
        self.random.load_state_dict(state["random"])


def _validation_case_order(cases: list[str], world_size: int) -> list[str]:
    """The order in which MONAI's metric handlers gather per-case results from the ranks' shards."""
    return [cases[i] for rank in range(world_size) for i in range(rank, len(cases), world_size)]


def _train_process(local_rank: int, content: dict[str, Any], resume: bool) -> None:
    """One training process (of ``idist.get_world_size()``), its objects freed before the process group goes.

    Ignite's engines hold their handlers in reference cycles, so the DDP model (and its gloo/NCCL work
    objects) would otherwise outlive ``destroy_process_group`` and be torn down at interpreter exit,
    which aborts the process (``terminate called without an active exception``).
    """
    try:
        _train_rank(content, resume)
    finally:
        gc.collect()


def _train_rank(content: dict[str, Any], resume: bool) -> None:
    """Build the data, network and engines of this rank and run them."""
    rank, world_size, device = idist.get_rank(), idist.get_world_size(), idist.device()
    writer_rank = rank == 0
    parser = ConfigParser(content)
    fold = parser["fold"]
    settings = TrainingConfig.from_dict(parser.get("training"))
    seed = int(parser.get("seed", 0))
    # global draws (network start, dropout) per rank; augmentation is seeded per drawn slice (SeededDraws)
    set_determinism(seed=seed + rank)
    context = context_slices(parser)
    run_dir = run_folder(parser, fold)
    checkpoint_dir = run_dir / "checkpoints"

    cache_dir = _cache_dir(parser)
    cache = SliceCache(cache_dir)
    labelled = [case for case in cache.cases if cache.label(case) is not None]
    manifest = load_manifest() if MANIFEST_PATH.is_file() else None
    train_cases, val_cases = fold_split(labelled, fold, manifest)

    augmentation = build_augmentation(parser.get("augmentation"), cache.preprocess.image_size)
    train_ds = SliceDataset(cache, train_cases, context=context, transform=augmentation)
    sampler_cfg = _sampler_section(parser)
    balance = check_balance(sampler_cfg.get("balance", "slice"))
    weights = tumour_weights(
        train_ds.tumour_flags,
        sampler_cfg.get("tumour_weight"),
        sampler_cfg.get("tumour_fraction"),
        lesion_shares(train_ds) if balance == "lesion" else None,
    )
    samples_per_epoch = settings.samples_per_epoch or len(train_ds)
    stream = StreamConfig.from_dict(parser.get_parsed_content("stream", default=None))
    if stream.enabled:
        # the cache keeps its share of each rank's draws; the stream gives the rest (lung_tumor.training.stream)
        per_rank = math.ceil(samples_per_epoch / world_size) if world_size > 1 else samples_per_epoch
        cached_draws, streamed = split_draws(per_rank, stream.fraction)
        cached = None
        if cached_draws:
            cached = SeededDraws(
                build_sampler(train_ds, weights, cached_draws * world_size, world_size=world_size, rank=rank),
                seed=seed,
                rank=rank,
            )
        tumour_fraction = stream.tumour_fraction
        if tumour_fraction is None:
            tumour_fraction = sampler_cfg.get("tumour_fraction") or 0.5
        synthetic = SyntheticSliceStream(stream, cache.preprocess, context, augmentation, tumour_fraction, balance)
        sampler = MixedDraws(cached, streamed, len(train_ds), stream, seed, rank=rank, world_size=world_size)
        train_ds = MixedSliceDataset(train_ds, synthetic)
        log.info(
            "stream: %d of %d draws per epoch and rank from fresh synthetic cases (%d cases, seed %d)",
            streamed,
            per_rank,
            sampler.cases_per_epoch,
            stream.seed,
        )
    else:
        sampler = SeededDraws(
            build_sampler(train_ds, weights, samples_per_epoch, world_size=world_size, rank=rank),
            seed=seed,
            rank=rank,
        )
    cuda = device.type == "cuda"
    train_loader = DataLoader(
        train_ds,
        batch_size=settings.batch_size,
        sampler=sampler,
        num_workers=settings.num_workers,
        pin_memory=cuda,
        persistent_workers=settings.num_workers > 0,
        worker_init_fn=init_loader_worker,
    )

    network = parser.get_parsed_content("network_def", instantiate=True)
    initial_weights = None
    if settings.init_from is not None and not resume:
        path = load_initial_weights(network, settings.init_from)
        initial_weights = {"path": str(path), "sha256": input_sha256(path)}
        log.info("network weights from %s (training.init_from)", path)
    num_parameters = sum(p.numel() for p in network.parameters())
    single_network = network
    network = idist.auto_model(network)
    optimizer = idist.auto_optim(build_optimizer(parser, network.parameters()))
    scheduler = build_scheduler(parser, optimizer)
    amp = settings.amp and cuda
    # on a CPU, amp means bfloat16 autocast where the CPU computes it natively (MONAI autocasts on CUDA only)
    cpu_bf16 = settings.amp and device.type == "cpu" and cpu_bf16_supported()
    train_inferer = AutocastInferer("cpu", torch.bfloat16) if cpu_bf16 else SimpleInferer()
    val_inferer = SliceStackInferer(context, settings.slices_per_batch)
    if cpu_bf16:
        val_inferer = AutocastInferer("cpu", torch.bfloat16, inner=val_inferer)

    evaluator = _build_evaluator(cache, val_cases, single_network, val_inferer, settings.threshold, device, amp)
    trainer = SupervisedTrainer(
        device=device,
        max_epochs=settings.epochs,
        train_data_loader=train_loader,
        network=network,
        optimizer=optimizer,
        loss_function=build_loss(parser.get("loss")),
        inferer=train_inferer,
        amp=amp,
        decollate=False,
    )
    Average(output_transform=_loss_value).attach(trainer, "train_loss")
    cpu_threads, former_threads = None, torch.get_num_threads()
    if device.type == "cpu":
        # training steps share the cores with the stream's busy workers; validation (workers idle) takes them all
        processes = idist.get_nproc_per_node()
        cpu_threads = network_threads(settings.threads, processes, settings.num_workers if stream.enabled else 0)
        validation_threads = network_threads(settings.threads, processes)
        torch.set_num_threads(cpu_threads)
        if evaluator is not None:
            evaluator.add_event_handler(Events.STARTED, lambda _: torch.set_num_threads(validation_threads))
            evaluator.add_event_handler(Events.COMPLETED, lambda _: torch.set_num_threads(cpu_threads))
        log.info("CPU threads: %d per training step, %d for validation", cpu_threads, validation_threads)
    if not writer_rank:  # one console for all ranks
        for engine in (trainer, evaluator):
            if engine is not None:
                engine.logger.setLevel(logging.WARNING)

    patience = (parser.get("early_stopping") or {}).get("patience")
    early_stop = None
    if patience and evaluator is not None:
        early_stop = EarlyStopHandler(
            patience=int(patience),
            score_function=stopping_fn_from_metric(KEY_METRIC),
            trainer=trainer,
            min_delta=float((parser.get("early_stopping") or {}).get("min_delta", 0.0)),
        )
    run_state = _RunState(early_stop)
    checkpoint_objects = {
        "network": single_network,
        "optimizer": optimizer,
        "scheduler": scheduler,
        "trainer": trainer,
        "run_state": run_state,
    }
    if resume:
        CheckpointLoader(
            load_path=str(checkpoint_dir / "last.pt"),
            load_dict={k: v for k, v in checkpoint_objects.items() if v is not None},
            map_location=device,
        ).attach(trainer)

    # training handlers, in the order they must run at each event
    _attach_stop_conditions(trainer, settings)

    @trainer.on(Events.EPOCH_STARTED)
    def _draw_epoch(engine: Any) -> None:  # a resumed epoch leaves out the batches trained before the stop
        done = engine.state.iteration % engine.state.epoch_length
        sampler.set_epoch(engine.state.epoch, skip=done * settings.batch_size)

    @trainer.on(Events.EPOCH_COMPLETED)
    def _record_lr(engine: Any) -> None:  # the rate this epoch used, before the scheduler steps
        engine.state.metrics["lr"] = optimizer.param_groups[0]["lr"]

    if scheduler is not None:
        LrScheduleHandler(scheduler, print_lr=False).attach(trainer)

    if evaluator is None:
        log.info("fold %s has no validation cases: no validation, early stopping or best checkpoint; use last.pt", fold)
    else:
        ValidationHandler(validator=evaluator, interval=settings.validation_interval, epoch_level=True).attach(trainer)

        @evaluator.on(Events.STARTED)
        def _note_validation(engine: Any) -> None:
            run_state.validated_iteration = trainer.state.iteration

        @trainer.on(Events.COMPLETED)
        def _validate_where_stopped(engine: Any) -> None:
            if run_state.validated_iteration != engine.state.iteration:
                evaluator.run(engine.state.epoch)

        val_cases_gathered = _validation_case_order(val_cases, world_size)

        @evaluator.on(Events.EPOCH_COMPLETED)
        def _track_best(engine: Any) -> None:
            dice = float(engine.state.metrics[KEY_METRIC])
            if dice > run_state.best_metric:
                details = engine.state.metric_details[KEY_METRIC].flatten().tolist()
                run_state.best_metric, run_state.best_epoch = dice, trainer.state.epoch
                run_state.best_per_case = dict(zip(val_cases_gathered, details, strict=False))
                if writer_rank:
                    save_checkpoint(checkpoint_dir / "best.pt", checkpoint_objects)

        if early_stop is not None:
            early_stop.attach(evaluator)

    writer = None
    if writer_rank:
        StatsHandler(name=STATS_LOGGER, iteration_log=False, tag_name="train_loss").attach(trainer)
        writer = _DeferredWriter(run_dir / "tensorboard")
        TensorBoardStatsHandler(summary_writer=writer, iteration_log=False).attach(trainer)
        if evaluator is not None:
            StatsHandler(
                name=STATS_LOGGER, iteration_log=False, global_epoch_transform=lambda _: trainer.state.epoch
            ).attach(evaluator)
            TensorBoardStatsHandler(
                summary_writer=writer, iteration_log=False, global_epoch_transform=lambda _: trainer.state.epoch
            ).attach(evaluator)
            _attach_tensorboard_images(evaluator, trainer, writer, settings.tensorboard_images)
        ProgressBar(persist=False).attach(trainer, output_transform=lambda output: {"loss": _loss_value(output)})

        @trainer.on(Events.EPOCH_COMPLETED)
        @trainer.on(Events.COMPLETED)
        def _save_last(engine: Any) -> None:
            save_checkpoint(checkpoint_dir / "last.pt", checkpoint_objects)

    # a resumed run keeps what metadata.json recorded before (best metric, epochs) until it writes its own
    previous = _read_json(run_dir / "metadata.json") if resume and (run_dir / "metadata.json").is_file() else {}
    metadata = {
        "versions": {
            "lung_tumor": lung_tumor.__version__,
            "monai": monai.__version__,
            "torch": torch.__version__,
            "ignite": ignite.__version__,
            "python": platform.python_version(),
        },
        "config_hash": saved_config_hash(parser.get()),
        "fold": fold,
        "cache_dir": str(cache_dir),
        "train_cases": train_cases,
        "validation_cases": val_cases,
        "train_slices": len(train_ds),
        "tumour_slices": int(train_ds.tumour_flags.sum()),
        "expected_tumour_fraction": float(weights[train_ds.tumour_flags].sum() / weights.sum()),
        "sampler_balance": balance,
        "samples_per_epoch": samples_per_epoch,
        "stream": ({**stream.__dict__, "draws_per_epoch_and_rank": len(sampler)} if stream.enabled else None),
        "parameters": num_parameters,
        # a resumed run continues from its own checkpoint: it keeps what its first start recorded
        "init_from": previous.get("init_from") if resume else initial_weights,
        "network": parser.get("network_def", {}).get("_target_"),
        "world_size": world_size,
        "device": str(device),
        "amp": "float16" if amp else "bfloat16" if cpu_bf16 else False,
        "cpu_threads": cpu_threads,
    }
    started = time.monotonic()
    log.info(
        "training %s on fold %s: %d training cases (%d slices, %d with tumour), %d validation cases, %d parameters",
        metadata["network"],
        fold,
        len(train_cases),
        len(train_ds),
        metadata["tumour_slices"],
        len(val_cases),
        num_parameters,
    )
    start_iteration = 0

    @trainer.on(Events.STARTED)  # after CheckpointLoader: a resume writes nothing until its checkpoint is loaded
    def _note_start(engine: Any) -> None:
        nonlocal start_iteration
        start_iteration = engine.state.iteration
        if writer_rank:
            save_config(parser, run_dir / "config.yaml")
            write_json(run_dir / "metadata.json", {**previous, **metadata, "status": "running"})

    try:
        trainer.run()
    finally:
        torch.set_num_threads(former_threads)  # the calling process's own setting, as it was
        if writer is not None:
            writer.close()
    if writer_rank:
        steps = trainer.state.iteration - start_iteration
        elapsed = time.monotonic() - started
        epochs_run = steps / max(trainer.state.epoch_length or 1, 1)
        metadata.update(
            status="finished",
            epochs=trainer.state.epoch,
            iterations=trainer.state.iteration,
            best_metric=run_state.best_metric if val_cases else None,
            best_metric_epoch=run_state.best_epoch if val_cases else None,
            best_per_case_dice=run_state.best_per_case,
            seconds=round(elapsed, 1),
            seconds_per_epoch=round(elapsed / epochs_run, 2) if epochs_run > 0 else None,
        )
        write_json(run_dir / "metadata.json", {**previous, **metadata})
        if val_cases:
            log.info(
                "best validation Dice %.4f at epoch %d; run folder %s",
                run_state.best_metric,
                run_state.best_epoch,
                run_dir,
            )
        else:
            log.info("finished without validation (fold %s); run folder %s", fold, run_dir)
    idist.barrier()


class _DeferredWriter:
    """A TensorBoard ``SummaryWriter`` created at its first use, so that a run failing at its start writes no file."""

    def __init__(self, log_dir: Path) -> None:
        self._log_dir = log_dir
        self._writer: SummaryWriter | None = None

    def __getattr__(self, name: str) -> Any:
        if self._writer is None:
            self._writer = SummaryWriter(log_dir=str(self._log_dir))
        return getattr(self._writer, name)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def _loss_value(output: dict[str, Any]) -> float:
    """The step's loss from the trainer's (not decollated) output."""
    return float(output[CommonKeys.LOSS].detach())


def _build_evaluator(
    cache: SliceCache,
    val_cases: list[str],
    network: torch.nn.Module,
    inferer: Any,
    threshold: float,
    device: torch.device,
    amp: bool,
) -> SupervisedEvaluator | None:
    """Validation of whole volumes, per case in 3D on binarised predictions; ``None`` without validation cases.

    Under DDP each rank validates its share of the cases.
    """
    if not val_cases:
        return None
    val_ds = VolumeDataset(cache, val_cases)
    val_sampler = (
        DistributedSampler(val_ds, even_divisible=False, shuffle=False) if idist.get_world_size() > 1 else None
    )
    val_loader = DataLoader(val_ds, batch_size=1, sampler=val_sampler, num_workers=0)
    return SupervisedEvaluator(
        device=device,
        val_data_loader=val_loader,
        # the plain module: ranks validate different cases, and DDP must not wait for the others' forward passes
        network=network,
        inferer=inferer,
        postprocessing=Compose(
            [Activationsd(keys="pred", sigmoid=True), AsDiscreted(keys="pred", threshold=threshold)]
        ),
        key_val_metric={
            # per case in 3D on binary masks; ignore_empty=False scores empty truth as 1 (empty prediction) or 0
            KEY_METRIC: IgniteMetricHandler(
                metric_fn=DiceMetric(include_background=True, reduction="mean", ignore_empty=False),
                output_transform=from_engine(["pred", "label"]),
            )
        },
        additional_metrics={
            f"val_{name}": ConfusionMatrix(
                include_background=True,
                metric_name=name,
                compute_sample=True,
                output_transform=from_engine(["pred", "label"]),
            )
            for name in ("precision", "recall")
        },
        amp=amp,
    )


def _attach_stop_conditions(trainer: SupervisedTrainer, settings: TrainingConfig) -> None:
    """Stop after ``max_iterations`` steps or ``max_minutes`` (rank 0's clock decides for every rank)."""
    if settings.max_iterations is not None:

        @trainer.on(Events.ITERATION_COMPLETED)
        def _stop_at_iteration(engine: Any) -> None:
            if engine.state.iteration >= settings.max_iterations:
                log.info("stopping at iteration %d (training.max_iterations)", engine.state.iteration)
                engine.terminate()

    if settings.max_minutes is not None:
        deadline = time.monotonic() + 60.0 * settings.max_minutes

        @trainer.on(Events.ITERATION_COMPLETED)
        def _stop_at_deadline(engine: Any) -> None:
            over = torch.tensor(int(time.monotonic() > deadline))
            if idist.get_world_size() > 1:
                over = idist.broadcast(over, src=0)
            if over.item():
                log.info("stopping after %.1f minutes (training.max_minutes)", settings.max_minutes)
                engine.terminate()


def _attach_tensorboard_images(
    evaluator: SupervisedEvaluator, trainer: SupervisedTrainer, writer: SummaryWriter, max_cases: int
) -> None:
    """Log (CT, truth, prediction) side by side for the first validation cases, at their largest tumour slice."""
    if max_cases < 1:
        return

    @evaluator.on(Events.ITERATION_COMPLETED)
    def _log_images(engine: Any) -> None:
        if engine.state.iteration > max_cases:
            return
        item, output = engine.state.batch[0], engine.state.output[0]
        # the batch stays where the loader made it (CPU); the prediction is on the network's device
        label, pred = item["label"][0].cpu(), output["pred"][0].cpu()  # (Z, H, W)
        area = label.sum(dim=(1, 2)) if label.any() else pred.sum(dim=(1, 2))
        z = int(area.argmax())
        image = item["image"][0, z].cpu()
        if image.ndim == 3:  # 2.5D input: the centre slice
            image = image[image.shape[0] // 2]
        grid = torch.cat([image.clamp(0, 1), label[z], pred[z]], dim=-1)[None].float()
        writer.add_image(f"validation/{item['case']}", grid, trainer.state.epoch)

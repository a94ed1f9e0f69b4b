"""``lung-tumor predict``: segment whole CT volumes with a trained run and write NIfTI masks and reports.

A volume goes through exactly the preprocessing the run was trained with (its saved ``config.yaml``),
except the crop from slice ``crop_from_slice``: prediction covers every axial slice, because the
network is 2D and sees one slice (with its neighbours) at a time; the crop only chose which slices
training learned from. The probabilities are mapped back to the input grid by inverting the MONAI
transforms (padding, in-plane resampling, orientation), so the mask has the input's shape and affine.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from scipy import ndimage
from tqdm import tqdm

from lung_tumor.config import PreprocessConfig
from lung_tumor.cores import available_cores
from lung_tumor.data.msd import NIFTI_SUFFIXES, case_id_from_path
from lung_tumor.ensemble import FILENAME as ENSEMBLE_FILENAME
from lung_tumor.ensemble import check_members_compatible, ensemble_members, is_ensemble
from lung_tumor.errors import LungTumorError
from lung_tumor.evaluation.lesions import label_lesions
from lung_tumor.heap import freed_memory_kept
from lung_tumor.io import save_nifti
from lung_tumor.measurements import axial_axis, voxel_spacing
from lung_tumor.models import default_model_dir
from lung_tumor.networks.folding import fold_batch_norms
from lung_tumor.outputs import OutputPlan, marker
from lung_tumor.postprocessing import PostProcessing, load_postprocessing
from lung_tumor.provenance import prediction_provenance
from lung_tumor.report import label_in_bounding_box, mask_bounding_box, tumour_report, write_report
from lung_tumor.thorax import ThoraxMasks, thorax_masks
from lung_tumor.training.run import (
    AutocastInferer,
    SliceStackInferer,
    checkpoint_file,
    context_slices,
    cpu_bf16_supported,
    load_trained_model,
)
from lung_tumor.transforms.pipeline import apply_transforms, load_volume, preprocess_transforms

log = logging.getLogger(__name__)

LUNG_MARGIN_MM = 10.0  # how far outside the HU lung mask a lesion may lie and still be kept
PRECISIONS = ("auto", "float32", "bfloat16")
# pixels sent to the network at once: 56 slices of 96x96, 8 of 256x256; a fixed 32 slices would hold 32 full-size
# activation stacks at 256x256 (GBs), and batches much larger than this did not run faster on a CPU
PIXELS_PER_BATCH = 2**19
T = TypeVar("T")
R = TypeVar("R")


@dataclass
class Prediction:
    """A segmented volume, on the input's own grid.

    Attributes:
        mask: uint8 tumour mask, the input's shape.
        probability: float32 tumour probability, the input's shape.
        affine: the input's 4x4 affine (RAS world, as nibabel).
        spacing: voxel size in mm along the three array axes.
        image_hu: the input CT in HU.
        source: the file or DICOM folder read.
        thorax: the CT's lungs when ``--lung-mask`` found them (the report reuses them), else None.
        provenance: package version, run, checkpoint, settings, input checksum and date, for the report.
    """

    mask: np.ndarray
    probability: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    image_hu: np.ndarray
    source: Path
    thorax: ThoraxMasks | None = None
    provenance: dict[str, Any] | None = None


@dataclass
class PreparedVolume:
    """A volume read and preprocessed for the network (:meth:`Predictor.prepare`), not yet segmented.

    Attributes:
        source: the file or DICOM folder read.
        image: the input as loaded (channel first, its own grid, HU).
        volume: the preprocessed (1, X, Y, Z) volume, carrying the transforms applied to it.
        transforms: the preprocessing chain, inverted to map the probabilities back to the input grid.
    """

    source: Path
    image: Any
    volume: Any
    transforms: Any


@contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run the block with ``count`` intra-op torch threads (``None``: as they are), then restore the former count."""
    former = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(former)


def folder_network_threads(precision: str, cores: int | None = None) -> int:
    """Intra-op torch threads for a folder's network on a CPU, where the next scan is read and the previous one's
    mask and reports written beside it (:func:`predict`); ``cores``: those this process may use (default: found).

    In bfloat16 (chosen on CPUs that compute it natively) the network's step is short and the reading and the reports
    need a core of their own: on 2 cores of an Intel CPU with AMX, a folder of 10 full-size scans took 42-49 s with
    one torch thread against 48-74 s with two, which waited for the core the other threads held. In float32 the
    network's step is most of the work and takes every core: on 2 cores of an AMD EPYC (no bfloat16) the same
    folder took 76-81 s with one thread against 54-62 s with two.
    """
    cores = available_cores() if cores is None else cores
    return max(1, cores - 1) if precision == "bfloat16" else max(1, cores)


def slices_per_batch_for(height: int, width: int) -> int:
    """Slices of ``height`` x ``width`` pixels sent to the network at once: about :data:`PIXELS_PER_BATCH` pixels."""
    return max(1, min(128, PIXELS_PER_BATCH // max(1, height * width)))


def prefetched(items: Sequence[T], load: Callable[[T], R]) -> Iterator[tuple[T, Future[R]]]:
    """Yield each item with the future of ``load(item)``, loading the next item in a background thread meanwhile.

    One item ahead at most: when item ``i`` is yielded, ``load`` runs on item ``i + 1`` while the caller works on
    item ``i``, and item ``i + 2`` is not started before the caller asks for item ``i + 1``. The futures come in the
    order of ``items``; an error raised by ``load`` is raised by the future's ``result()``. Closing the iterator
    early (the caller stops at a failure) cancels what has not started and waits for what has.
    """
    if not items:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lung-tumor-read") as pool:
        ahead = pool.submit(load, items[0])
        try:
            for index, item in enumerate(items):
                current = ahead
                if index + 1 < len(items):
                    ahead = pool.submit(load, items[index + 1])
                yield item, current
        finally:
            ahead.cancel()


def network_slice_count(slices: int, slice_mm: float, min_slice_mm: float) -> int:
    """How many slices the network sees of a stack of ``slices`` slices ``slice_mm`` apart: as many as keep them at
    least about ``min_slice_mm`` apart (at least one; 0 or a wider spacing: all of them)."""
    if min_slice_mm <= 0 or slice_mm >= min_slice_mm:
        return slices
    return max(1, round(slices * slice_mm / min_slice_mm))  # fewer than ``slices``: the ratio is under 1


def average_slices(stack: torch.Tensor, count: int) -> torch.Tensor:
    """A (N, C, Z, Y, X) stack brought to ``count`` slices, each the mean of the slices it spans (area averaging,
    as a thicker reconstruction would); ``count`` equal to Z returns the stack itself."""
    if count == stack.shape[2]:
        return stack
    return torch.nn.functional.interpolate(stack, size=(count, *stack.shape[3:]), mode="area")


def interpolate_slices(stack: torch.Tensor, count: int) -> torch.Tensor:
    """The inverse of :func:`average_slices`: a (N, C, Z', Y, X) stack linearly interpolated along Z to ``count``
    slices, each averaged slice's value placed at the centre of the slices it spans."""
    if count == stack.shape[2]:
        return stack
    return torch.nn.functional.interpolate(stack, size=(count, *stack.shape[3:]), mode="trilinear", align_corners=False)


def lesion_depth_ratios(labels: np.ndarray, count: int, affine: np.ndarray) -> np.ndarray:
    """Per lesion ``1..count`` (index 0 unused): its craniocaudal extent over its widest in-plane extent, in mm of
    its bounding box; ``inf`` for a lesion that reaches the first or last axial slice, which the scan may cut."""
    axial, spacing = axial_axis(affine), voxel_spacing(affine)
    ratios = np.full(count + 1, np.inf)
    for index, box in enumerate(ndimage.find_objects(labels, count), 1):
        if box is None or box[axial].start == 0 or box[axial].stop == labels.shape[axial]:
            continue
        extent = [(b.stop - b.start) * s for b, s in zip(box, spacing, strict=True)]
        ratios[index] = extent[axial] / max(e for axis, e in enumerate(extent) if axis != axial)
    return ratios


def keep_lesions(mask: np.ndarray, judge: Callable[[np.ndarray, int, tuple[slice, ...]], np.ndarray]) -> np.ndarray:
    """``mask`` with only the 26-connected lesions that ``judge`` keeps, as a 0/1 mask of the same dtype.

    ``judge(labels, count, box)`` gets the lesions labelled ``1..count`` inside ``box``, the mask's bounding box grown
    by one voxel (so a lesion reaches the box's first or last slice only where it reaches the mask's), and returns a
    flag for each label ``0..count``. Labelling, judging and gathering inside the box instead of the whole CT saves
    seconds on a full-size scan."""
    box = mask_bounding_box(mask, margin=1)
    if box is None:
        return mask
    labels, count = label_lesions(mask[box])
    keep = np.array(judge(labels, count, box), dtype=bool)
    keep[0] = False
    kept = np.zeros_like(mask)
    kept[box] = keep[labels]
    return kept


def remove_lesions(
    mask: np.ndarray, affine: np.ndarray, min_mm3: float = 0.0, min_depth_ratio: float = 0.0
) -> np.ndarray:
    """Drop 26-connected components smaller than ``min_mm3`` cubic millimetres or flatter than ``min_depth_ratio``
    (:func:`lesion_depth_ratios`), labelling the mask once for both (:func:`keep_lesions`)."""
    if min_mm3 <= 0 and min_depth_ratio <= 0:
        return mask
    voxel_mm3 = float(np.prod(voxel_spacing(affine)))

    def large_and_deep(labels: np.ndarray, count: int, box: tuple[slice, ...]) -> np.ndarray:
        keep = np.bincount(labels.ravel(), minlength=count + 1) * voxel_mm3 >= min_mm3
        if min_depth_ratio > 0:
            keep &= lesion_depth_ratios(labels, count, affine) >= min_depth_ratio
        return keep

    return keep_lesions(mask, large_and_deep)


def keep_near_lungs(
    mask: np.ndarray, image_hu: np.ndarray, affine: np.ndarray, thorax: ThoraxMasks | None = None
) -> np.ndarray:
    """Keep the lesions that lie within :data:`LUNG_MARGIN_MM` of the lungs (a HU-based lung mask).

    ``thorax`` is :func:`~lung_tumor.thorax.thorax_masks` of the CT when already found (found here if not).
    """
    labels, count = label_in_bounding_box(mask)
    if not count:
        return mask
    if thorax is None:
        thorax = thorax_masks(image_hu, affine)
    return near_lung_flags(labels, count, affine, thorax)[labels].astype(mask.dtype)


def lung_margin_voxels(affine: np.ndarray) -> list[int]:
    """Voxels along each array axis that surely cover :data:`LUNG_MARGIN_MM` (one more than the ceiling)."""
    return [int(np.ceil(LUNG_MARGIN_MM / s)) + 1 for s in np.linalg.norm(affine[:3, :3], axis=0)]


def near_lung_flags(labels: np.ndarray, count: int, affine: np.ndarray, thorax: Any) -> np.ndarray:
    """For lesion labels ``1..count`` (index 0 is background, False): whether each lies within
    :data:`LUNG_MARGIN_MM` of the lungs of ``thorax`` (anything with ``lungs(box)``). Each lesion is judged alone,
    within its box grown by :func:`lung_margin_voxels`."""
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    margin = lung_margin_voxels(affine)
    keep = np.zeros(count + 1, dtype=bool)
    for index, box in enumerate(ndimage.find_objects(labels, max_label=count), start=1):
        if box is None:
            continue
        grown = tuple(
            slice(max(b.start - m, 0), min(b.stop + m, n)) for b, m, n in zip(box, margin, labels.shape, strict=True)
        )
        near_lung = thorax.lungs(grown)
        if near_lung.any():
            distance_mm = ndimage.distance_transform_edt(~near_lung, sampling=spacing)
            keep[index] = bool((distance_mm[labels[grown] == index] <= LUNG_MARGIN_MM).any())
    return keep


def clean_mask(
    mask: np.ndarray, settings: PostProcessing, affine: np.ndarray, thorax: ThoraxMasks | None
) -> np.ndarray:
    """A thresholded mask after the rest of ``settings``: small and flat lesions removed, then (with ``lung_mask``,
    where ``thorax`` holds the CT's lungs) the lesions far from the lungs."""
    mask = remove_lesions(mask, affine, settings.min_lesion_mm3, settings.min_depth_ratio)
    if settings.lung_mask:
        if thorax is None:
            raise ValueError("lung_mask needs the CT's thorax masks")
        mask = keep_near_lungs(mask, np.empty(0), affine, thorax)  # the lungs are found: the CT is not needed
    return mask


class Predictor:
    """Segment CT volumes with a trained run.

    Args:
        run_dir: the training run folder (``config.yaml`` and ``checkpoints/``), a model folder (the shipped
            one: :func:`lung_tumor.models.default_model_dir`), or an ensemble folder (:mod:`lung_tumor.ensemble`),
            whose members' probabilities are averaged.
        checkpoint: ``best``, ``last`` or a checkpoint path (of each member, for an ensemble).
        threshold: probability above which a voxel is tumour.
        min_lesion_mm3: remove predicted lesions smaller than this.
        lung_mask: keep only lesions in or within 10 mm of the lungs.
        flip_tta: average the probabilities of the scan and its in-plane mirror images.
        min_depth_ratio: remove predicted lesions whose craniocaudal extent is less than this fraction of their
            widest in-plane extent (:func:`remove_lesions`).
        min_slice_mm: the network sees slices at least about this far apart: closer ones are averaged along the
            body axis first and the probabilities interpolated back (:func:`average_slices`).
        second_look_mm, second_look_threshold, second_look_support: a second pass on a finer grid whose lesions
            the first pass vouches for (:class:`~lung_tumor.postprocessing.PostProcessing`; 0 mm: none).
            For these nine, ``None`` takes the run's stored choice (``RUN/postprocess.json``, written by
            ``lung-tumor tune``), else :data:`lung_tumor.postprocessing.DEFAULT`.
        slices_per_batch: axial slices sent to the network at once (default: from the slice size,
            :func:`slices_per_batch_for`).
        device: torch device (default: CUDA when available).
        precision: ``float32``; ``bfloat16`` (autocast, on a CPU); or ``auto``: bfloat16 where the run was
            trained with ``training.amp`` (so its best checkpoint was chosen with bfloat16 inference) and the CPU
            computes it natively (:func:`~lung_tumor.training.run.cpu_bf16_supported`), float32 elsewhere.

    Raises:
        LungTumorError: the run folder, its config or its checkpoint is missing or unreadable.

    Examples::

        predictor = Predictor("runs/demo/unet2d/fold_0")
        result = predictor.predict_file("scan.nii.gz")
        result.mask.sum()
    """

    def __init__(
        self,
        run_dir: str | Path,
        checkpoint: str = "best",
        threshold: float | None = None,
        min_lesion_mm3: float | None = None,
        lung_mask: bool | None = None,
        slices_per_batch: int | None = None,
        device: str | torch.device | None = None,
        precision: str = "auto",
        flip_tta: bool | None = None,
        min_depth_ratio: float | None = None,
        min_slice_mm: float | None = None,
        second_look_mm: float | None = None,
        second_look_threshold: float | None = None,
        second_look_support: float | None = None,
    ) -> None:
        overrides = {
            "threshold": threshold,
            "min_lesion_mm3": min_lesion_mm3,
            "lung_mask": lung_mask,
            "flip_tta": flip_tta,
            "min_depth_ratio": min_depth_ratio,
            "min_slice_mm": min_slice_mm,
            "second_look_mm": second_look_mm,
            "second_look_threshold": second_look_threshold,
            "second_look_support": second_look_support,
        }
        PostProcessing().with_overrides(**overrides)  # a bad value fails before the model loads
        if precision not in PRECISIONS:
            raise LungTumorError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cpu" and torch.get_num_threads() != available_cores():
            torch.set_num_threads(available_cores())  # torch counts the machine's cores, not the ones lent to us
        start = time.perf_counter()
        self.ensemble = is_ensemble(run_dir)
        members = ensemble_members(run_dir) if self.ensemble else [Path(run_dir)]
        loaded = [load_trained_model(member, checkpoint, self.device) for member in members]
        configs = [config for _, config in loaded]
        check_members_compatible(configs, members)
        # batch norms folded into their convolutions (one pass less over each activation map; the same outputs up
        # to float rounding), in channels-last, the layout oneDNN's convolutions work in: no conversion per layer
        self.networks = [fold_batch_norms(network)[0].to(memory_format=torch.channels_last) for network, _ in loaded]
        self.network = self.networks[0]
        self.channels_last = True
        config = configs[0]
        self.preprocess = PreprocessConfig.from_dict(config.get("preprocess", {}))
        self.slices_per_batch = slices_per_batch
        self.inferer = SliceStackInferer(context_slices(config), slices_per_batch or 32)
        if precision == "auto":
            trained_amp = all(bool((c.get("training") or {}).get("amp", False)) for c in configs)
            native = self.device.type == "cpu" and cpu_bf16_supported()
            precision = "bfloat16" if trained_amp and native else "float32"
        self.precision = precision
        stored = load_postprocessing(run_dir) if None in overrides.values() else PostProcessing()
        self.postprocessing = stored.with_overrides(**overrides)
        if self.postprocessing.second_look_mm:  # a grid too fine for the run's field fails before any scan is read
            try:
                self.second_look_preprocess()
            except LungTumorError as err:
                fine = self.postprocessing.second_look_mm
                raise LungTumorError(f"second look at {fine:g} mm: {err}", run_dir) from None
        self.run_dir = Path(run_dir)
        self.member_checkpoints = [
            checkpoint_file(member, checkpoint, c) for member, c in zip(members, configs, strict=True)
        ]
        self.checkpoint_path = self.run_dir / ENSEMBLE_FILENAME if self.ensemble else self.member_checkpoints[0]
        log.debug(
            "model loaded in %.2f s; predict on %s, %s, %d threads",
            time.perf_counter() - start,
            self.device,
            precision,
            torch.get_num_threads(),
        )

    def _member(self, network: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        """``network`` as the inferer calls it, fed in the channels-last layout unless ``channels_last`` is off."""

        def call(slices: torch.Tensor) -> torch.Tensor:
            if self.channels_last:
                slices = slices.contiguous(memory_format=torch.channels_last)
            return network(slices)

        return call

    def probabilities(self, volume: torch.Tensor) -> torch.Tensor:
        """Tumour probabilities of a preprocessed (1, X, Y, Z) volume, same shape.

        The mean of the sigmoid outputs over the members of an ensemble and, with ``flip_tta``, over the scan and
        its mirror images.
        """
        return self._probabilities(volume, mirrored=self.postprocessing.flip_tta)[0]

    def probabilities_with_and_without_flips(self, volume: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`probabilities` without and with ``flip_tta``, from one pass of each member over the scan and its
        mirror images (the scan's own pass serves both); each as the setting alone computes it, bit for bit."""
        plain, mirrored = self._probabilities(volume, mirrored=True, plain_too=True)
        return plain, mirrored

    def _probabilities(self, volume: torch.Tensor, mirrored: bool, plain_too: bool = False) -> list[torch.Tensor]:
        """The probabilities, averaged with the mirror images when ``mirrored``; with ``plain_too``, first those of
        the scan's own pass alone (kept only when asked: predict's mirrored pass needs no second volume)."""
        stack = volume.as_tensor() if hasattr(volume, "as_tensor") else volume
        # slices as the slice cache stores them for training: (Z, Y, X)
        stack = stack.permute(0, 3, 2, 1)[None].to(self.device, torch.float32)  # (1, 1, Z, Y, X)
        slices = stack.shape[2]
        stack = average_slices(stack, self._network_slices(volume))
        self.inferer.slices_per_batch = self.slices_per_batch or slices_per_batch_for(*stack.shape[-2:])
        inferer = self.inferer
        if self.precision == "bfloat16":
            inferer = AutocastInferer(self.device.type, torch.bfloat16, inner=inferer)
        # mirror left-right and front-back in the slice plane, then back
        flips: list[tuple[int, ...]] = [(), (-1,), (-2,)] if mirrored else [()]
        with torch.inference_mode():
            # each sum in the order one setting alone adds its terms
            plain = torch.zeros_like(stack) if plain_too else None
            both = torch.zeros_like(stack)
            for network in self.networks:
                call = self._member(network)
                for axes in flips:
                    view = stack.flip(axes) if axes else stack
                    member = torch.sigmoid(inferer(view, call))
                    member = member.flip(axes) if axes else member
                    if plain is not None and not axes:
                        plain += member
                    both += member
            found = ([plain / len(self.networks)] if plain is not None else []) + [
                both / (len(self.networks) * len(flips))
            ]
            found = [interpolate_slices(p, slices)[0].permute(0, 3, 2, 1).cpu() for p in found]  # (1, X, Y, Z)
        return [p.clone() for p in found]  # normal tensors: the inverse transforms may work on them in place

    def _network_slices(self, volume: torch.Tensor) -> int:
        """How many slices of the preprocessed (1, X, Y, Z) ``volume`` the network sees (``min_slice_mm``)."""
        slices, minimum = int(volume.shape[-1]), self.postprocessing.min_slice_mm
        if minimum <= 0:
            return slices
        affine = getattr(volume, "affine", None)
        if affine is None:
            raise ValueError("min_slice_mm needs the volume's affine: pass the MetaTensor that prepare() made")
        return network_slice_count(slices, voxel_spacing(affine)[2], minimum)

    def restore(self, prepared: PreparedVolume, probability: torch.Tensor) -> np.ndarray:
        """Probabilities of the network's grid (:meth:`probabilities` of ``prepared``) back on the input's grid."""
        on_grid = prepared.volume.clone()
        on_grid.set_array(probability)
        restored = prepared.transforms.inverse({"image": on_grid})["image"]
        return np.asarray(restored[0].numpy(), dtype=np.float32)

    def second_look_preprocess(self) -> PreprocessConfig:
        """The run's preprocessing on the grid of ``second_look_mm``, over the same field of view."""
        fine = self.postprocessing.second_look_mm
        size = max(16, round(self.preprocess.image_size * self.preprocess.pixel_mm / fine))
        return replace(self.preprocess, pixel_mm=fine, image_size=size)

    def second_look(
        self, prepared: PreparedVolume, probability_map: np.ndarray, affine: np.ndarray, thorax: ThoraxMasks | None
    ) -> np.ndarray:
        """The lesions of the second pass (:class:`~lung_tumor.postprocessing.PostProcessing`, ``second_look_mm``)
        that the first pass's ``probability_map`` vouches for, as a mask on the input grid."""
        settings = self.postprocessing
        start = time.perf_counter()
        transforms = preprocess_transforms(self.second_look_preprocess(), keys=("image",), crop=False)
        volume = apply_transforms(transforms, {"image": prepared.image})["image"]
        fine = PreparedVolume(prepared.source, prepared.image, volume, transforms)
        fine_map = self.restore(fine, self._probabilities(volume, mirrored=False)[0])
        found = clean_mask((fine_map > settings.second_look_threshold).astype(np.uint8), settings, affine, thorax)
        tally = {"found": 0, "vouched": 0}

        def vouched_for(labels: np.ndarray, count: int, box: tuple[slice, ...]) -> np.ndarray:
            peaks = np.zeros(count + 1)
            peaks[1:] = ndimage.maximum(probability_map[box], labels, np.arange(1, count + 1))
            keep = peaks >= settings.second_look_support
            tally.update(found=count, vouched=int(keep[1:].sum()))
            return keep

        added = keep_lesions(found, vouched_for)
        log.debug(
            "%s: second look at %g mm, %.2f s: %d of %d lesion(s) vouched for",
            prepared.source.name,
            settings.second_look_mm,
            time.perf_counter() - start,
            tally["vouched"],
            tally["found"],
        )
        return added

    def prepare(self, path: str | Path) -> PreparedVolume:
        """Read one NIfTI file or DICOM series folder and preprocess it as the run was trained.

        Raises:
            LungTumorError: the input is missing, unreadable, or not a 3D volume.
        """
        path = Path(path)
        start = time.perf_counter()
        image = load_volume(path, "image")
        read = time.perf_counter()
        transforms = preprocess_transforms(self.preprocess, keys=("image",), crop=False)
        volume = apply_transforms(transforms, {"image": image})["image"]
        log.debug("%s: read %.2f s, preprocess %.2f s", path.name, read - start, time.perf_counter() - read)
        return PreparedVolume(path, image, volume, transforms)

    def predict_file(self, path: str | Path | PreparedVolume) -> Prediction:
        """Segment one NIfTI file or DICOM series folder (or a volume :meth:`prepare` has read).

        Raises:
            LungTumorError: the input is missing, unreadable, or not a 3D volume.
        """
        prepared = path if isinstance(path, PreparedVolume) else self.prepare(path)
        path, image, volume = prepared.source, prepared.image, prepared.volume
        image_hu = image[0].numpy()
        affine = image.affine.numpy()
        start = time.perf_counter()
        probability = self.probabilities(volume)
        inferred = time.perf_counter()
        probability_map = self.restore(prepared, probability)
        log.debug("%s: inference %.2f s, restore %.2f s", path.name, inferred - start, time.perf_counter() - inferred)
        if probability_map.shape != image_hu.shape:  # the inverse chain must land on the input grid
            raise RuntimeError(f"restored shape {probability_map.shape} differs from {image_hu.shape}")
        spacing = voxel_spacing(affine)
        settings = self.postprocessing
        thorax = thorax_masks(image_hu, affine) if settings.lung_mask else None
        mask = clean_mask((probability_map > settings.threshold).astype(np.uint8), settings, affine, thorax)
        if settings.second_look_mm > 0:
            mask |= self.second_look(prepared, probability_map, affine, thorax)
        provenance = prediction_provenance(
            path,
            self.run_dir,
            self.checkpoint_path,
            settings.threshold,
            settings.min_lesion_mm3,
            settings.lung_mask,
            precision=self.precision,
            flip_tta=settings.flip_tta,
            min_depth_ratio=settings.min_depth_ratio,
            min_slice_mm=settings.min_slice_mm,
            ensemble_members=self.member_checkpoints if self.ensemble else (),
            second_look={
                "second_look_mm": settings.second_look_mm,
                "second_look_threshold": settings.second_look_threshold,
                "second_look_support": settings.second_look_support,
            },
        )
        return Prediction(mask, probability_map, affine, spacing, image_hu, path, thorax, provenance)  # type: ignore[arg-type]


def input_volumes(path: Path) -> list[Path]:
    """The volumes named by ``--input``: a NIfTI file, a DICOM series folder, or a folder of NIfTI files.

    Hidden files (``.name``, such as the temporary file of a write that was killed) are never inputs.
    """
    if not path.exists():
        raise LungTumorError("input not found", path)
    if path.is_file():
        if not path.name.endswith(NIFTI_SUFFIXES):
            raise LungTumorError("input must be a .nii/.nii.gz file or a folder", path)
        return [path]
    visible = sorted(p for p in path.iterdir() if not p.name.startswith("."))
    niftis = [p for p in visible if p.name.endswith(NIFTI_SUFFIXES)]
    if niftis:
        return niftis
    if any(p.is_file() for p in visible):
        return [path]  # a DICOM series
    raise LungTumorError("folder holds no NIfTI file and no DICOM series", path)


def output_paths(source: Path, output: Path | None, run_dir: Path, many: bool) -> dict[str, Path]:
    """Where the mask, probability map and reports of ``source`` go."""
    case = case_id_from_path(source)
    if output is None:
        folder = run_dir / "predictions"
    elif many or output.is_dir() or not output.name.endswith(NIFTI_SUFFIXES):
        folder = output
    else:
        folder, case = output.parent, case_id_from_path(output)
    return {
        "mask": folder / f"{case}.nii.gz",
        "probability": folder / f"{case}_probability.nii.gz",
        "report_json": folder / f"{case}_report.json",
        "report_text": folder / f"{case}_report.txt",
        "report_html": folder / f"{case}_report.html",
    }


def plan_outputs(
    sources: list[Path],
    output: Path | None,
    run_dir: Path,
    save_probabilities: bool = False,
    report: bool = True,
    overwrite: bool = False,
    html: bool = True,
) -> list[dict[str, Path]]:
    """Every path ``predict`` will write for ``sources``, checked by the output policy before any work.

    Returns:
        For each source, its output paths (``mask``, and ``probability``, ``report_json``, ``report_text``,
        ``report_html`` when written; the page only with the report).

    Raises:
        LungTumorError: an output would replace an input or a file lung-tumor did not write, or cannot be
            written (see :class:`lung_tumor.outputs.OutputPlan`).
    """
    plan = OutputPlan(inputs=sources, overwrite=overwrite)
    planned = []
    for source in sources:
        paths = output_paths(source, output, run_dir, len(sources) > 1)
        if not save_probabilities:
            paths.pop("probability")
        if not report:
            paths.pop("report_json")
            paths.pop("report_text")
        if not (report and html):
            paths.pop("report_html")
        for name, path in paths.items():
            vouched_by = paths["report_json"] if name in ("report_text", "report_html") else None
            plan.add_file(path, vouched_by=vouched_by, source=source)
        planned.append(paths)
    plan.check()
    return planned


def predict(
    run: str | Path | None,
    input: str | Path,
    output: str | Path | None = None,
    threshold: float | None = None,
    min_lesion_mm3: float | None = None,
    lung_mask: bool | None = None,
    save_probabilities: bool = False,
    report: bool = True,
    overwrite: bool = False,
    fail_fast: bool = False,
    on_error: Callable[[LungTumorError], None] | None = None,
    html: bool = True,
    precision: str = "auto",
    flip_tta: bool | None = None,
    min_depth_ratio: float | None = None,
    min_slice_mm: float | None = None,
    second_look_mm: float | None = None,
    second_look_threshold: float | None = None,
    second_look_support: float | None = None,
) -> list[dict[str, Path]]:
    """``lung-tumor predict``: masks (uint8 NIfTI on the input's grid) and tumour spread reports.

    Every output path is checked before the model is loaded (:func:`plan_outputs`). The model is loaded once
    for all inputs; while one scan is segmented, the next is read and preprocessed in a background thread
    (:func:`prefetched`) and the previous one's mask and reports are written in another
    (:func:`write_prediction`, one scan at a time, each file atomically). With several inputs a scan that cannot
    be read, segmented or written is reported through ``on_error`` and the others go on; the call then raises one
    error that counts the failures.

    Args:
        run: the training run, model or ensemble folder; ``None``: the model shipped in the package
            (:func:`lung_tumor.models.default_model_dir`).
        input: a NIfTI file, a folder of NIfTI files, or a DICOM series folder.
        output: mask file or folder (default: ``RUN/predictions/``; ``./predictions/`` with the shipped model).
        threshold, min_lesion_mm3, lung_mask, flip_tta, min_depth_ratio, min_slice_mm, second_look_mm,
            second_look_threshold, second_look_support: post-processing (see :class:`Predictor`); ``None`` takes the
            run's stored choice.
        save_probabilities: also write the probability map (``CASE_probability.nii.gz``).
        report: write the tumour spread report (``CASE_report.json``, ``.txt`` and, with ``html``, ``.html``).
        overwrite: replace existing output files that lung-tumor did not write (never an input).
        fail_fast: stop at the first scan that fails (its error is raised).
        on_error: called with each failing scan's error (default: log it).
        html: with the report, also write the one-page ``CASE_report.html`` (:mod:`lung_tumor.report_html`).
        precision: ``auto``, ``float32`` or ``bfloat16`` (see :class:`Predictor`).

    Returns:
        For each input segmented, the paths written.

    Raises:
        LungTumorError: an unsafe output, an unusable run, a failing single input, or (after the batch)
            the count of failed scans.
    """
    sources = input_volumes(Path(input))
    if run is None:
        run = default_model_dir()
        output = Path("predictions") if output is None else output  # never into the installed package
    planned = plan_outputs(
        sources, None if output is None else Path(output), Path(run), save_probabilities, report, overwrite, html
    )
    predictor = Predictor(
        run,
        threshold=threshold,
        min_lesion_mm3=min_lesion_mm3,
        lung_mask=lung_mask,
        precision=precision,
        flip_tta=flip_tta,
        min_depth_ratio=min_depth_ratio,
        min_slice_mm=min_slice_mm,
        second_look_mm=second_look_mm,
        second_look_threshold=second_look_threshold,
        second_look_support=second_look_support,
    )
    paths_of = dict(zip(sources, planned, strict=True))
    written, failed = [], []
    many = len(sources) > 1
    progress = tqdm(total=len(sources), desc="predict", unit="volume", disable=not many)

    def failure(source: Path, err: LungTumorError) -> None:
        if fail_fast or not many:
            raise err
        (on_error or _log_error)(err)
        failed.append(source)
        progress.update()

    def settle(pending: tuple[Path, Future[None]] | None) -> None:
        """Wait for a scan's write; its error is that scan's failure."""
        if pending is None:
            return
        source, future = pending
        try:
            future.result()
        except LungTumorError as err:
            failure(source, err)
            return
        written.append(paths_of[source])
        progress.update()

    # the next scan is read (prefetched) and the previous one written (writer) while this one is segmented;
    # one write in flight at most, so at most three scans are held; leaving the block waits for that write,
    # and closing the reader first stops the read of the next scan when a failure stops the batch
    pending = None
    with (
        progress,
        torch_threads(folder_network_threads(predictor.precision) if many and predictor.device.type == "cpu" else None),
        freed_memory_kept(len(sources)),
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="lung-tumor-write") as writer,
        closing(prefetched(sources, predictor.prepare)) as volumes,
    ):
        for source, prepared in volumes:
            try:
                result = predictor.predict_file(prepared.result())
            except LungTumorError as err:
                settle(pending)  # the previous scan's outcome first: messages in the order of the scans
                pending = None
                failure(source, err)
                continue
            settle(pending)
            # a batch keeps the cores busy already: each report in one thread, beside the next scan's inference
            pending = (source, writer.submit(write_prediction, result, paths_of[source], 1 if many else None))
            del result  # the writer holds it now, and lets it go when written
        settle(pending)
    if failed:
        raise LungTumorError(
            f"{len(failed)} of {len(sources)} scans failed, {len(written)} segmented; each failure is reported above",
            input,
        )
    if len(sources) > 1:
        log.info("predict: %d scans segmented, 0 failed", len(written))
    return written


def _log_error(err: LungTumorError) -> None:
    log.error("%s", err)


def write_prediction(result: Prediction, paths: dict[str, Path], workers: int | None = None) -> None:
    """Write the mask, and the probability map and report when ``paths`` names them, each marked as ours.

    ``workers``: threads for the report's steps that can run side by side (default: the cores this process may use).
    """
    start = time.perf_counter()
    save_nifti(result.mask, result.affine, paths["mask"], description=marker("predict", "mask"))
    if "probability" in paths:
        save_nifti(
            result.probability, result.affine, paths["probability"], description=marker("predict", "probability")
        )
    written = time.perf_counter()
    log.debug("%s: write %.2f s", result.source.name, written - start)
    if "report_json" in paths:
        spread = {
            "generator": marker("predict"),
            **tumour_report(
                result.mask,
                result.affine,
                result.image_hu,
                thorax=result.thorax,
                probability=result.probability,
                workers=workers,
            ),
            "provenance": result.provenance,
        }
        spread["source"] = str(result.source)
        write_report(spread, paths["report_json"], paths["report_text"])
        if "report_html" in paths:
            from lung_tumor.report_html import write_report_html

            case = paths["report_html"].name.removesuffix("_report.html")
            write_report_html(
                spread, result.mask, result.image_hu, result.affine, paths["report_html"], case, workers=workers
            )
        log.debug("%s: report %.2f s", result.source.name, time.perf_counter() - written)
        log.info(
            "%s: %d lesion(s), %.2f ml -> %s",
            result.source.name,
            spread["lesion_count"],
            spread["total_volume_ml"],
            paths["mask"],
        )


__all__ = ["PreparedVolume", "Prediction", "Predictor", "predict", "prefetched"]

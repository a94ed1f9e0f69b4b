"""PNG pictures a clinician can read: contour overlays, montages across the tumour, training curves.

CT slices are shown in a lung window (W1500 / L-600) in radiological convention (patient's right on the
image's left, anterior up), derived from the affine with nibabel's orientation tools, so any voxel order
is displayed the same way. Axes are in millimetres. Figures are drawn with matplotlib's Agg canvas (no
display, no global ``pyplot`` state) and written atomically.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import nibabel as nib
import numpy as np
from matplotlib import patheffects
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from lung_tumor.errors import LungTumorError
from lung_tumor.io import atomic_path
from lung_tumor.outputs import OutputPlan, marker
from lung_tumor.report import axial_axis

log = logging.getLogger(__name__)

LUNG_WINDOW_WIDTH, LUNG_WINDOW_LEVEL = 1500.0, -600.0
# Okabe-Ito bluish green and vermillion: distinguishable with the common colour-vision deficiencies.
TRUTH_COLOUR, PREDICTION_COLOUR = "#009E73", "#D55E00"
DPI = 100
OVERLAY_SIZE_INCHES = (15.0, 6.0)  # 1500 x 600 pixels
MONTAGE_COLUMNS, MONTAGE_MAX_SLICES = 4, 12
MONTAGE_WIDTH_INCHES, MONTAGE_ROW_INCHES, MONTAGE_TITLE_INCHES = 16.0, 4.2, 0.9  # 12 slices: 1600 x 1350 pixels
MONTAGE_MARGIN_MM = 15.0
DISPLAY_AXCODES = ("P", "L", "S")  # array rows run anterior -> posterior, columns patient right -> left


def save_figure(figure: Figure, path: str | Path) -> Path:
    """Save a figure as PNG through a temporary file and ``os.replace``; returns the path.

    The PNG's ``Software`` text names lung-tumor, so a later run may replace it (:mod:`lung_tumor.outputs`).
    """
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=DPI, metadata={"Software": marker("visualize")})
    return Path(path)


def case_picture_paths(output: str | Path, name: str) -> list[Path]:
    """The files :func:`case_pictures` may write: ``NAME_overlay.png`` and ``NAME_montage.png`` in ``output``."""
    return [Path(output) / f"{name}_overlay.png", Path(output) / f"{name}_montage.png"]


class _DisplayVolume:
    """A CT and its masks reoriented for radiological display: ``data[row, column, slice]``."""

    def __init__(self, image_hu: np.ndarray, affine: np.ndarray, masks: dict[str, np.ndarray | None]) -> None:
        affine = np.asarray(affine, dtype=float)
        transform = nib.orientations.ornt_transform(
            nib.orientations.io_orientation(affine), nib.orientations.axcodes2ornt(DISPLAY_AXCODES)
        )
        image = np.asarray(image_hu)
        if not (np.issubdtype(image.dtype, np.integer) or image.dtype == np.float32):
            image = image.astype(np.float32)  # integer HU are drawn as they are: no float copy of the whole CT
        self.image = nib.orientations.apply_orientation(image, transform)
        self.masks = {
            name: None if m is None else nib.orientations.apply_orientation(np.asarray(m) != 0, transform)
            for name, m in masks.items()
        }
        self.affine = affine @ nib.orientations.inv_ornt_aff(transform, np.shape(image_hu))
        self.to_original = np.linalg.inv(affine) @ self.affine
        self.original_axial_axis = axial_axis(affine)
        self.row_mm, self.column_mm = np.linalg.norm(self.affine[:3, :2], axis=0)

    @property
    def tumour(self) -> np.ndarray:
        """What the slice choice and the zoom follow: the ground truth when it has tumour, else the prediction."""
        truth = self.masks.get("truth")
        if truth is not None and truth.any():
            return truth
        prediction = self.masks.get("prediction")
        return np.zeros(self.image.shape, dtype=bool) if prediction is None else prediction

    def slice_label(self, k: int) -> str:
        """Slice number in the original file's voxel order and its world z in mm."""
        original = self.to_original @ np.array([0.0, 0.0, k, 1.0])
        z_mm = (self.affine @ np.array([0.0, 0.0, k, 1.0]))[2]
        return f"slice {int(round(original[self.original_axial_axis]))}, z = {z_mm:.1f} mm"

    def extent(self) -> tuple[float, float, float, float]:
        rows, columns = self.image.shape[:2]
        return (0.0, columns * self.column_mm, rows * self.row_mm, 0.0)

    def draw(self, ax, k: int, box_mm: tuple[float, float, float, float] | None = None) -> None:
        """Draw slice ``k`` with the mask contours on ``ax``; ``box_mm`` = (x0, x1, y0, y1) zooms in."""
        lo = LUNG_WINDOW_LEVEL - LUNG_WINDOW_WIDTH / 2
        ax.imshow(
            self.image[:, :, k],
            cmap="gray",
            vmin=lo,
            vmax=lo + LUNG_WINDOW_WIDTH,
            extent=self.extent(),
            interpolation="nearest",
        )
        rows, columns = self.image.shape[:2]
        x = (np.arange(columns) + 0.5) * self.column_mm
        y = (np.arange(rows) + 0.5) * self.row_mm
        for name, colour, width in (("truth", TRUTH_COLOUR, 2.0), ("prediction", PREDICTION_COLOUR, 1.4)):
            mask = self.masks.get(name)
            if mask is not None and mask[:, :, k].any():
                ax.contour(x, y, mask[:, :, k].astype(np.float32), levels=[0.5], colors=[colour], linewidths=width)
        x0, x1, y0, y1 = box_mm if box_mm is not None else self.extent()[:2] + self.extent()[2:][::-1]
        ax.set_xlim(x0, x1)
        ax.set_ylim(y1, y0)
        ax.set_aspect("equal")
        ax.tick_params(labelsize=7)
        orientation_letters(ax, ("R", "L", "A", "P"))

    def tumour_box_mm(self, margin_mm: float = MONTAGE_MARGIN_MM) -> tuple[float, float, float, float]:
        """In-plane bounding box of the tumour (all slices) plus a margin, made square, in mm."""
        rows, columns = np.nonzero(self.tumour.any(axis=2))
        x0, x1 = columns.min() * self.column_mm, (columns.max() + 1) * self.column_mm
        y0, y1 = rows.min() * self.row_mm, (rows.max() + 1) * self.row_mm
        half = max(x1 - x0, y1 - y0) / 2 + margin_mm
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        return cx - half, cx + half, cy - half, cy + half


def orientation_letters(ax, letters: tuple[str, str, str, str], fontsize: int = 9) -> None:
    """Write patient directions at the left, right, top and bottom edges of ``ax`` (axial radiological: R, L, A, P)."""
    for text, position, align in zip(
        letters,
        ((0.02, 0.5), (0.98, 0.5), (0.5, 0.98), (0.5, 0.02)),
        (("left", "center"), ("right", "center"), ("center", "top"), ("center", "bottom")),
        strict=True,
    ):
        ax.text(
            *position,
            text,
            transform=ax.transAxes,
            color="white",
            fontsize=fontsize,
            fontweight="bold",
            path_effects=[patheffects.withStroke(linewidth=2, foreground="black")],
            ha=align[0],
            va=align[1],
        )


def _legend(figure: Figure, volume: _DisplayVolume) -> None:
    handles, labels = [], []
    if volume.masks.get("truth") is not None:
        handles.append(Line2D([], [], color=TRUTH_COLOUR, linewidth=2.0))
        labels.append("ground truth")
    if volume.masks.get("prediction") is not None:
        handles.append(Line2D([], [], color=PREDICTION_COLOUR, linewidth=1.4))
        labels.append("prediction")
    if handles:
        figure.legend(handles, labels, loc="lower center", ncol=len(handles), fontsize=11, frameon=False)


def _area_mm2(volume: _DisplayVolume, name: str, k: int) -> str:
    mask = volume.masks.get(name)
    return "-" if mask is None else f"{mask[:, :, k].sum() * volume.row_mm * volume.column_mm:.0f} mm²"


def overlay_figure(
    image_hu: np.ndarray,
    affine: np.ndarray,
    truth: np.ndarray | None,
    prediction: np.ndarray | None,
    path: str | Path,
    title: str = "",
    slices: int = 3,
) -> Path:
    """Whole axial slices with the tumour's largest area, ground-truth and predicted contours drawn.

    Args:
        image_hu: (X, Y, Z) CT in Hounsfield units.
        affine: its voxel-to-world affine.
        truth: ground-truth mask on the same grid, or ``None``.
        prediction: predicted mask on the same grid, or ``None``.
        path: the PNG to write (1500 x 600 pixels).
        title: shown above the panels (e.g. the case id).
        slices: how many slices (largest tumour area first, shown superior first); the area is the ground
            truth's, or the prediction's when the ground truth is empty or absent.

    Returns:
        The written path.
    """
    volume = _DisplayVolume(image_hu, affine, {"truth": truth, "prediction": prediction})
    area = volume.tumour.sum(axis=(0, 1))
    depth = volume.image.shape[2]
    if area.any():
        chosen = [int(k) for k in np.argsort(-area, kind="stable")[:slices] if area[k] > 0]
        note = "slices of largest tumour area"
    else:
        chosen = sorted({int(round(f * (depth - 1))) for f in np.linspace(0.25, 0.75, slices)})
        note = "no tumour in ground truth or prediction: evenly spaced slices"
    chosen.sort(reverse=True)  # superior first
    figure = Figure(figsize=OVERLAY_SIZE_INCHES, dpi=DPI)
    for ax, k in zip(_blank_axes(figure, 1, slices), chosen, strict=False):
        ax.set_axis_on()
        volume.draw(ax, k)
        ax.set_title(
            f"{volume.slice_label(k)}\ntruth {_area_mm2(volume, 'truth', k)}, "
            f"prediction {_area_mm2(volume, 'prediction', k)}",
            fontsize=10,
        )
        ax.set_xlabel("mm (patient's right → left)", fontsize=8)
        ax.set_ylabel("mm (anterior → posterior)", fontsize=8)
    return _finish(figure, volume, f"{title}  {note}", path, top=0.84, bottom=0.12)


def montage_figure(
    image_hu: np.ndarray,
    affine: np.ndarray,
    truth: np.ndarray | None,
    prediction: np.ndarray | None,
    path: str | Path,
    title: str = "",
) -> Path | None:
    """Up to 12 evenly spaced axial slices across the tumour's extent, zoomed on the tumour.

    The tumour is the ground truth's, or the prediction's when the ground truth is empty or absent.

    Returns:
        The written path (1600 pixels wide, 420 pixels per row of 4 slices plus 90 for the titles), or
        ``None`` when neither mask has any tumour.
    """
    volume = _DisplayVolume(image_hu, affine, {"truth": truth, "prediction": prediction})
    present = np.flatnonzero(volume.tumour.any(axis=(0, 1)))
    if not present.size:
        log.info("no tumour in ground truth or prediction: no montage for %s", title or path)
        return None
    count = min(MONTAGE_MAX_SLICES, present.size)
    chosen = np.unique(np.round(np.linspace(present.min(), present.max(), count)).astype(int))[::-1]
    rows = math.ceil(len(chosen) / MONTAGE_COLUMNS)
    box = volume.tumour_box_mm()
    height = MONTAGE_ROW_INCHES * rows + MONTAGE_TITLE_INCHES
    figure = Figure(figsize=(MONTAGE_WIDTH_INCHES, height), dpi=DPI)
    for ax, k in zip(_blank_axes(figure, rows, MONTAGE_COLUMNS), chosen, strict=False):
        ax.set_axis_on()
        volume.draw(ax, int(k), box)
        ax.set_title(volume.slice_label(int(k)), fontsize=10)
    title = f"{title}  tumour extent, superior to inferior (mm)"
    return _finish(figure, volume, title, path, top=1 - 0.7 / height, bottom=0.4 / height, hspace=0.3)


def _blank_axes(figure: Figure, rows: int, columns: int) -> list[Axes]:
    """A grid of panels with their axes hidden; the ones that get a slice turn theirs back on."""
    axes = list(figure.subplots(rows, columns, squeeze=False).ravel())
    for ax in axes:
        ax.set_axis_off()
    return axes


def _finish(figure: Figure, volume: _DisplayVolume, title: str, path: str | Path, **spacing: float) -> Path:
    """Title (with the window and view), legend and margins of a slice figure, then write it."""
    figure.suptitle(f"{title}; lung window W1500/L-600, radiological view".strip(), fontsize=12)
    _legend(figure, volume)
    figure.subplots_adjust(left=0.04, right=0.99, wspace=0.25, **spacing)
    return save_figure(figure, path)


def case_pictures(
    image_hu: np.ndarray,
    affine: np.ndarray,
    truth: np.ndarray | None,
    prediction: np.ndarray | None,
    output: str | Path,
    name: str,
) -> list[Path]:
    """Overlay and montage of one case into ``output`` as ``NAME_overlay.png`` and ``NAME_montage.png``."""
    overlay_path, montage_path = case_picture_paths(output, name)
    written = [overlay_figure(image_hu, affine, truth, prediction, overlay_path, title=name)]
    montage = montage_figure(image_hu, affine, truth, prediction, montage_path, title=name)
    if montage is not None:
        written.append(montage)
    return written


def read_scalars(run: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag of a run's TensorBoard logs (``RUN/tensorboard/``, subfolders included).

    Returns:
        tag -> [(step, value), ...] sorted by step; a tag found in several log folders is prefixed with
        the folder's name relative to ``tensorboard/``.

    Raises:
        LungTumorError: there is no ``tensorboard/`` folder or no scalar in it.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = Path(run) / "tensorboard"
    if not folder.is_dir():
        raise LungTumorError("run has no tensorboard/ folder", run)
    log_dirs = sorted({p.parent for p in folder.rglob("events.out.tfevents.*")})
    found: dict[Path, dict[str, list[tuple[int, float]]]] = {}
    for log_dir in log_dirs:
        accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
        accumulator.Reload()
        found[log_dir] = {
            tag: sorted((e.step, e.value) for e in accumulator.Scalars(tag)) for tag in accumulator.Tags()["scalars"]
        }
    tags = [tag for by_tag in found.values() for tag in by_tag]
    scalars: dict[str, list[tuple[int, float]]] = {}
    for log_dir, by_tag in found.items():
        prefix = log_dir.relative_to(folder).as_posix()
        for tag, points in by_tag.items():
            scalars[f"{prefix}/{tag}" if tags.count(tag) > 1 and prefix != "." else tag] = points
    if not scalars:
        raise LungTumorError("no scalar found in the TensorBoard logs", folder)
    return dict(sorted(scalars.items()))


def training_curves_figure(run: str | Path, path: str | Path) -> Path:
    """Plot every scalar of a run's TensorBoard logs, one panel per tag; returns the written PNG."""
    scalars = read_scalars(run)
    columns = min(3, len(scalars))
    rows = math.ceil(len(scalars) / columns)
    figure = Figure(figsize=(5.0 * columns, 3.4 * rows + 0.6), dpi=DPI)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax in axes[len(scalars) :]:
        ax.set_axis_off()
    for ax, (tag, points) in zip(axes, scalars.items(), strict=False):
        steps, values = zip(*points, strict=True)
        ax.plot(steps, values, marker="o" if len(points) <= 30 else None, markersize=3, color="#0072B2")
        if ("lr" in tag.lower().split("/")[-1] or "learning_rate" in tag.lower()) and min(values) > 0:
            ax.set_yscale("log")
        ax.set_title(tag, fontsize=11)
        ax.set_xlabel("step", fontsize=9)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
    figure.suptitle(f"training curves: {Path(run).name}", fontsize=12)
    figure.tight_layout(rect=(0, 0, 1, 0.96))
    return save_figure(figure, path)


def visualize_command(
    image: str | Path | None = None,
    label: str | Path | None = None,
    prediction: str | Path | None = None,
    run: str | Path | None = None,
    output: str | Path = "pictures",
    overwrite: bool = False,
) -> list[Path]:
    """``lung-tumor visualize``: overlay and montage of a CT with its masks, and/or a run's training curves.

    Args:
        image: CT NIfTI; with ``label`` and/or ``prediction`` (NIfTI masks on the same grid) it gives
            ``NAME_overlay.png`` and ``NAME_montage.png``.
        label: ground-truth mask NIfTI.
        prediction: predicted mask NIfTI.
        run: a training run folder: gives ``training_curves.png`` from its ``tensorboard/`` logs.
        output: the folder to write into.
        overwrite: replace existing PNGs that lung-tumor did not write (never an input).

    Returns:
        The written PNG paths.

    Raises:
        LungTumorError: nothing to draw, a file is missing or unreadable, a mask's shape differs from the CT's,
            or an output is unsafe (:class:`lung_tumor.outputs.OutputPlan`).
    """
    output = Path(output)
    if image is None and run is None:
        raise LungTumorError("nothing to draw: give --image (with --label and/or --prediction) or --run")
    if image is None and (label is not None or prediction is not None):
        raise LungTumorError("--label and --prediction need the CT they belong to (--image)")
    case = None if image is None else Path(image).name.removesuffix(".gz").removesuffix(".nii")
    plan = OutputPlan(inputs=[p for p in (image, label, prediction) if p is not None], overwrite=overwrite)
    plan.add_folder(output)
    for path in [] if case is None else case_picture_paths(output, case):
        plan.add_file(path)
    if run is not None:
        plan.add_file(output / "training_curves.png")
    plan.check()
    written: list[Path] = []
    if image is not None:
        # the input checks of every command: CT in HU with a sound geometry, masks of 0/1 on its grid
        from lung_tumor.transforms.pipeline import check_label, load_volume

        ct = load_volume(image, "image")
        image_hu, affine = np.asarray(ct[0].numpy(), dtype=np.float32), ct.affine.numpy()
        masks: dict[str, np.ndarray | None] = {}
        for name, path in (("truth", label), ("prediction", prediction)):
            masks[name] = None
            if path is not None:
                mask = load_volume(path, "label" if name == "truth" else "prediction")
                check_label(ct, mask, path)
                masks[name] = mask[0].numpy()
        if label is None and prediction is None:
            log.warning("no --label or --prediction: the overlay shows the CT only")
        written += case_pictures(image_hu, affine, masks["truth"], masks["prediction"], output, case)
    if run is not None:
        written.append(training_curves_figure(run, output / "training_curves.png"))
    for path in written:
        log.info("wrote %s", path)
    return written

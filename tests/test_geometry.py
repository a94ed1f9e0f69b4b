"""Geometry: every mask lands where its lesion is, in world millimetres, whatever the input's orientation.

The stand-in network here sees its neighbourhood: it marks a pixel when the pixel ``SHIFT`` away in the
slice (and, in 2.5D, a neighbour slice) is soft tissue. Its correct output is therefore the lesion moved
by a known distance along known patient axes, and a slice handed to it sideways, mirrored or with its
neighbours in the wrong order moves the mask somewhere else. The lesions sit off-centre on all three axes,
so a flipped or shifted output moves their centroid too. Centroids are compared in world millimetres
(``scipy.ndimage.center_of_mass`` and the affine) to within the finest voxel size of the input.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from scipy import ndimage
from test_inference import ORIENTATIONS

from lung_tumor.cache import SliceCache, SliceDataset
from lung_tumor.cli import main
from lung_tumor.config import PreprocessConfig
from lung_tumor.data.msd import write_dataset_json
from lung_tumor.inference import Predictor
from lung_tumor.preprocess import preprocess_dataset

WINDOW = (-1350.0, 150.0)  # the default lung window, HU mapped to [0, 1]
TISSUE_HU = -75.0  # the stand-in network's threshold: soft tissue (lesions at 30 HU) above, fat (-100 HU) below
SHIFT = (2, -3)  # the stand-in marks pixel (h, w) when pixel (h + 2, w - 3) of the same slice is soft tissue
KERNEL = 7  # the stand-in's convolution size: big enough for SHIFT
# lesion centres as fractions of each array axis: off-centre on every axis
LESION_AT = (0.32, 0.66, 0.62)
LESION_RADIUS_MM = 8.0


def shift_network(context: int = 0, shift: tuple[int, int] = SHIFT, slice_offset: int = 0, gain: float = 200.0):
    """A convolution whose logit at (h, w) is ``gain * (x[context + slice_offset, h + dh, w + dw] - tissue)``."""
    channels = 2 * context + 1
    half = KERNEL // 2
    network = torch.nn.Conv2d(channels, 1, kernel_size=KERNEL, padding=half)
    threshold = (TISSUE_HU - WINDOW[0]) / (WINDOW[1] - WINDOW[0])
    with torch.no_grad():
        network.weight.zero_()
        network.weight[0, context + slice_offset, half + shift[0], half + shift[1]] = gain
        network.bias.fill_(-gain * threshold)
    return network


def make_shift_run(
    folder: Path,
    pixel_mm: float = 2.0,
    image_size: int = 96,
    context: int = 0,
    shift: tuple[int, int] = SHIFT,
    slice_offset: int = 0,
    gain: float = 200.0,
    crop_from_slice: int = 30,
    orientation: str = "RAS",
) -> Path:
    """A run folder (``config.yaml`` and ``checkpoints/best.pt``) holding :func:`shift_network`."""
    network = shift_network(context, shift, slice_offset, gain)
    (folder / "checkpoints").mkdir(parents=True)
    torch.save({"network": network.state_dict()}, folder / "checkpoints" / "best.pt")
    config = {
        "preprocess": {
            "crop_from_slice": crop_from_slice,
            "pixel_mm": pixel_mm,
            "image_size": image_size,
            "orientation": orientation,
        },
        "context_slices": context,
        "network_def": {
            "_target_": "torch.nn.Conv2d",
            "in_channels": 2 * context + 1,
            "out_channels": 1,
            "kernel_size": KERNEL,
            "padding": KERNEL // 2,
        },
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder


def ellipsoid(shape: tuple[int, ...], spacing: np.ndarray, centre: tuple[float, ...], radius_mm: float) -> np.ndarray:
    """Voxels within ``radius_mm`` of ``centre`` (voxel indices), in millimetres along the array axes."""
    grids = np.meshgrid(*(np.arange(n, dtype=float) for n in shape), indexing="ij")
    distance = sum(((g - c) * s) ** 2 for g, c, s in zip(grids, centre, spacing, strict=True))
    return distance <= radius_mm**2


def axial_axis(affine: np.ndarray) -> int:
    """The array axis closest to the patient's inferior-superior axis."""
    return int(np.argmax(np.abs(affine[2, :3])))


def phantom(shape: tuple[int, int, int], affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Air, a fat body with two lungs in each axial slice, and one soft-tissue lesion off-centre.

    Returns:
        The CT in HU (int16) and the lesion mask (bool), both of ``shape``.
    """
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    plane = [a for a in range(3) if a != axial_axis(affine)]
    coords = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    u, v = coords[plane[0]], coords[plane[1]]
    image = np.full(shape, -1000.0)
    image[(u / 0.9) ** 2 + (v / 0.75) ** 2 < 1] = -100.0
    image[((np.abs(u) - 0.42) / 0.32) ** 2 + (v / 0.55) ** 2 < 1] = -850.0
    centre = tuple(f * (n - 1) for f, n in zip(LESION_AT, shape, strict=True))
    lesion = ellipsoid(shape, spacing, centre, LESION_RADIUS_MM)
    image[lesion] = 30.0
    return image.astype(np.int16), lesion


def world_centroid(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The centroid of a mask in world (RAS) millimetres."""
    assert mask.any(), "empty mask"
    return (affine @ np.r_[ndimage.center_of_mass(mask.astype(float)), 1.0])[:3]


def oriented_axes(
    affine: np.ndarray, shape: tuple[int, ...], pixel_mm: float, orientation: str = "RAS"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World steps (mm) of one pixel along the network's W, H and slice axes, after reorientation to
    ``orientation`` (RAS: W from the patient's left to right, H posterior to anterior, slices upward)
    and in-plane resampling."""
    ornt = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(affine), nib.orientations.axcodes2ornt(orientation)
    )
    steps = np.zeros((3, 3))
    for axis, (target, flip) in enumerate(ornt):
        column = affine[:3, axis]
        size_mm = shape[axis] * np.linalg.norm(column)
        # ResampleInPlane keeps the field of view: round(size / pixel_mm) pixels over the same millimetres
        step = np.linalg.norm(column) if int(target) == 2 else size_mm / max(1, round(size_mm / pixel_mm))
        steps[:, int(target)] = flip * column / np.linalg.norm(column) * step
    return steps[:, 0], steps[:, 1], steps[:, 2]


def expected_offset(
    affine: np.ndarray,
    shape: tuple[int, ...],
    pixel_mm: float,
    shift=SHIFT,
    slice_offset: int = 0,
    orientation: str = "RAS",
) -> np.ndarray:
    """Where the stand-in network's mask lies relative to the lesion, in world mm."""
    along_w, along_h, along_slices = oriented_axes(affine, shape, pixel_mm, orientation)
    return -(shift[0] * along_h + shift[1] * along_w + slice_offset * along_slices)


def case_for(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The phantom CT, lesion mask and affine of an orientation of :data:`ORIENTATIONS`."""
    affine = ORIENTATIONS[name]
    # PIR: anterior to posterior, superior to inferior (0.8 mm slices), left to right in 2.5 mm steps
    image, lesion = phantom((140, 48, 52) if name == "PIR" else (160, 140, 24), affine)
    return image, lesion, affine


def predict_cli(run: Path, source: Path, out: Path, *extra: str) -> None:
    assert main(["predict", "--run", str(run), "--input", str(source), "--output", str(out), *extra]) == 0


def read_mask(path: Path) -> tuple[np.ndarray, np.ndarray]:
    image = nib.load(path)
    return np.asarray(image.dataobj) > 0, image.affine


@pytest.mark.parametrize(
    ("name", "orientation"), [(name, "RAS") for name in ORIENTATIONS] + [("tilted", "LPS"), ("PIR", "LAS")]
)
def test_mask_centroid_lands_on_the_lesion_in_world_mm(tmp_path: Path, name: str, orientation: str) -> None:
    """Input stored in four ways; the run works on RAS slices, or on LPS or LAS ones (its config's orientation)."""
    image, lesion, affine = case_for(name)
    source = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(image, affine), source)
    run = make_shift_run(tmp_path / "run", orientation=orientation)
    predict_cli(run, source, tmp_path / "out")
    mask, mask_affine = read_mask(tmp_path / "out" / "ct.nii.gz")
    np.testing.assert_allclose(mask_affine, affine, atol=1e-4)
    expected = world_centroid(lesion, affine) + expected_offset(affine, image.shape, 2.0, orientation=orientation)
    voxel_mm = float(np.linalg.norm(affine[:3, :3], axis=0).min())
    np.testing.assert_allclose(world_centroid(mask, mask_affine), expected, atol=voxel_mm)
    # the lesion moved, not grown: resampling to 2 mm pixels and back only wears its edge (to 0.7 of it in PIR)
    assert 0.6 * lesion.sum() < mask.sum() <= lesion.sum()


@pytest.mark.parametrize("name", ["RAS", "PIR"])
def test_2_5d_neighbours_are_the_right_slices_in_the_right_order(tmp_path: Path, name: str) -> None:
    """A 2.5D stand-in that reads only its second superior neighbour: the mask comes two slices lower."""
    image, lesion, affine = case_for(name)
    source = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(image, affine), source)
    run = make_shift_run(tmp_path / "run", context=2, slice_offset=2)
    predict_cli(run, source, tmp_path / "out")
    mask, _ = read_mask(tmp_path / "out" / "ct.nii.gz")
    axial = axial_axis(affine)
    slices_of = lambda m: np.flatnonzero(m.any(axis=tuple(a for a in range(3) if a != axial)))  # noqa: E731
    superior = 1 if affine[2, axial] > 0 else -1  # the array direction that goes up in the patient
    np.testing.assert_array_equal(slices_of(mask), slices_of(lesion) - 2 * superior)
    expected = world_centroid(lesion, affine) + expected_offset(affine, image.shape, 2.0, slice_offset=2)
    voxel_mm = float(np.linalg.norm(affine[:3, :3], axis=0).min())
    np.testing.assert_allclose(world_centroid(mask, affine), expected, atol=voxel_mm)


@pytest.mark.parametrize("name", ["LPS", "tilted", "PIR"])
def test_cached_slice_is_the_slice_the_predictor_feeds(tmp_path: Path, name: str) -> None:
    """Training's slices (the cache) and prediction's slices of one file are the same arrays, the same way up."""
    image, lesion, affine = case_for(name)
    root = tmp_path / "data"
    for folder, array in (("imagesTr", image), ("labelsTr", lesion.astype(np.uint8))):
        (root / folder).mkdir(parents=True)
        nib.save(nib.Nifti1Image(array, affine), root / folder / "lung_001.nii.gz")
    write_dataset_json(root, ["lung_001"], [])
    cfg = PreprocessConfig(crop_from_slice=4, pixel_mm=2.0, image_size=96, num_workers=0)
    cache = SliceCache(preprocess_dataset(root, tmp_path / "cache", cfg, progress=False))
    run = make_shift_run(tmp_path / "run", context=1, crop_from_slice=4)

    predictor = Predictor(run)
    fed: list[torch.Tensor] = []
    predictor.network.register_forward_pre_hook(lambda module, args: fed.append(args[0].detach().clone()))
    predictor.predict_file(root / "imagesTr" / "lung_001.nii.gz")
    fed_stacks = torch.cat(fed).numpy()  # (slices of the whole volume, 3, H, W)

    records = [r for r in cache.records if r.case == "lung_001"]
    assert len(fed_stacks) == records[-1].source_slice + 1 and records[0].source_slice == 4
    items = SliceDataset(cache, ["lung_001"], context=1)
    for index, record in enumerate(records[1:-1], start=1):  # the edge slices repeat themselves in the cache
        cached = items[index]["image"]
        assert cached.shape == fed_stacks[record.source_slice].shape == (3, 96, 96)
        np.testing.assert_allclose(cached, fed_stacks[record.source_slice], atol=1e-3, rtol=1e-3)

    # the cached label lies where the lesion is, by the cache's own affine (meta.json)
    meta = cache.meta("lung_001")
    label_zhw = np.asarray(cache.label("lung_001"))
    cached_centroid = world_centroid(label_zhw.transpose(2, 1, 0), np.asarray(meta["affine"]))
    np.testing.assert_allclose(cached_centroid, world_centroid(lesion, affine), atol=1.0)
    tissue = np.asarray(cache.image("lung_001"), dtype=np.float32) > (TISSUE_HU - WINDOW[0]) / (WINDOW[1] - WINDOW[0])
    np.testing.assert_allclose(
        world_centroid(tissue.transpose(2, 1, 0), np.asarray(meta["affine"])), world_centroid(lesion, affine), atol=1.0
    )

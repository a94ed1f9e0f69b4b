"""The report's shortcuts (boxes, all-slices-at-once operations, crops) against plain loops and whole arrays.

The report is computed in bounding boxes and with vectorised operations so that it costs well under a second on a
512 x 512 x 300 scan; each shortcut here must give exactly what the straightforward computation gives.
"""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from chest_phantom import AFFINE, SHAPE, add_box, add_sphere, chest, to_lps
from PIL import Image
from scipy import ndimage

from lung_tumor.evaluation.lesions import label_lesions, lesion_components, nonzero_voxels
from lung_tumor.location import (
    CHEST_WALL,
    DIAPHRAGM,
    LEFT,
    MEDIASTINUM,
    RIGHT,
    _box_gap,
    _may_reach,
    _nearest_voxels,
    _tissue_regions,
)
from lung_tumor.measurements import _boundary, axial_axis, axial_calipers, caliper_diameter
from lung_tumor.report import BODY_MIN_HU, hu_above, hu_below, nearest_along_lines, tumour_report, voxel_spacing
from lung_tumor.report_html import _displayed, _png_data_uri, lesion_picture, write_report_html
from lung_tumor.thorax import (
    _largest_per_slice,
    _sample,
    coarse_factors,
    fill_holes_in_plane,
    sample_nonzero,
    thorax_masks,
    upsample,
)
from lung_tumor.visualize import _DisplayVolume


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_holes_filled_on_all_slices_at_once_as_slice_by_slice(axis: int) -> None:
    rng = np.random.default_rng(axis)
    mask = rng.random((12, 10, 9)) < 0.55
    expected = np.stack(
        [ndimage.binary_fill_holes(np.take(mask, k, axis=axis)) for k in range(mask.shape[axis])], axis=axis
    )
    filled = fill_holes_in_plane(mask, axis)
    assert filled.sum() > mask.sum()  # the random mask has holes to fill
    np.testing.assert_array_equal(filled, expected)


def test_largest_component_of_every_slice_as_slice_by_slice() -> None:
    rng = np.random.default_rng(0)
    tissue = rng.random((16, 14, 11)) < 0.45  # many small components, equal sizes among them
    tissue[:, :, 3] = False  # an empty slice
    expected = np.zeros_like(tissue)
    for k in range(tissue.shape[2]):
        labels, count = ndimage.label(tissue[:, :, k])
        if count:
            sizes = np.bincount(labels.ravel())[1:]
            expected[:, :, k] = labels == np.flatnonzero(sizes == sizes.max())[-1] + 1  # a tie: the last found
    np.testing.assert_array_equal(_largest_per_slice(tissue), expected)


def _regions_by_lines(regions, tissue, plane_z, extent, lr, ax) -> np.ndarray:  # noqa: ANN001
    """The tissue regions by their definition, one voxel and one line at a time."""
    out = regions.copy()
    for v in zip(*np.nonzero(tissue), strict=True):
        line = list(v)
        labels = []
        for side in (range(v[lr] - 1, -1, -1), range(v[lr] + 1, regions.shape[lr])):
            found = 0
            for i in side:
                line[lr] = i
                if regions[tuple(line)] in (RIGHT, LEFT):
                    found = regions[tuple(line)]
                    break
            labels.append(found)
        if labels[0] and labels[1] and labels[0] != labels[1]:
            out[v] = MEDIASTINUM
            continue
        line = list(v)
        above = [k for k in range(regions.shape[ax]) if plane_z[k] > plane_z[v[ax]]]
        lungs_above = [k for k in above if regions[tuple(line[:ax] + [k] + line[ax + 1 :])] in (RIGHT, LEFT)]
        out[v] = CHEST_WALL
        if lungs_above:
            k = min(lungs_above, key=lambda k: plane_z[k])  # the lowest lung voxel above
            label = regions[tuple(line[:ax] + [k] + line[ax + 1 :])]
            name = "right" if label == RIGHT else "left"
            if name in extent and not extent[name][3]:
                top, bottom = extent[name][:2]
                if plane_z[k] <= top - 2 * (top - bottom) / 3:
                    out[v] = DIAPHRAGM
    return out


@pytest.mark.parametrize("superior_first", [True, False])
def test_tissue_regions_searched_in_the_lungs_box_as_along_every_line(superior_first: bool) -> None:
    rng = np.random.default_rng(1)
    shape = (14, 9, 12)  # left-right axis 0, axial axis 2
    regions = np.zeros(shape, dtype=np.uint8)
    regions[2:6, 2:7, 3:8] = RIGHT
    regions[8:12, 3:7, 2:7] = LEFT
    regions[rng.random(shape) < 0.15] = 0  # holes, and lungs that do not fill their box
    tissue = (rng.random(shape) < 0.6) & (regions == 0)
    plane_z = 100.0 - 2.5 * np.arange(shape[2]) if superior_first else -40.0 + 2.5 * np.arange(shape[2])
    extent = {}  # per lung: superior z, inferior z, cut at the top, cut at the bottom (as lung_anatomy finds it)
    for name, planes in (("right", [3, 7]), ("left", [2, 6])):
        extent[name] = (float(plane_z[planes].max()), float(plane_z[planes].min()), False, False)
    expected = _regions_by_lines(regions, tissue, plane_z, extent, 0, 2)
    found = regions.copy()
    _tissue_regions(found, tissue, plane_z, extent, 0, 2)
    assert {MEDIASTINUM, CHEST_WALL, DIAPHRAGM} <= set(np.unique(expected[tissue]))
    below_the_lungs = expected[:, :, 8:] if superior_first else expected[:, :, :2]
    assert (below_the_lungs == DIAPHRAGM).any()
    np.testing.assert_array_equal(found, expected)


SPACINGS = [(1.0, 1.0, 1.0), (0.84, 0.84, 1.0), (0.7, 0.7, 2.5)]  # isotropic: many equally near voxels


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nearest_structure_voxel_in_its_box_as_in_the_whole_array(spacing: tuple[float, ...], seed: int) -> None:
    """A lesion with tissue around it at a distance, in a box larger than both: the nearest tissue voxel of each
    lesion voxel, ties included, as the transform of the whole box finds it."""
    rng = np.random.default_rng(seed)
    shape = (44, 40, 30)
    low = rng.integers(14, 18, size=3)
    lesion = tuple(slice(lo, lo + n) for lo, n in zip(low, rng.integers(5, 9, size=3), strict=True))
    gap = (0, 3, 6)[seed]  # voxels of clear space round the lesion
    structure = np.zeros(shape, dtype=bool)
    block = (slice(4, 38), slice(6, 36), slice(3, 28))  # the array's edges hold no tissue
    structure[block] = rng.random(structure[block].shape) < (0.1, 0.5, 0.9)[seed]  # sparse to nearly solid
    structure[tuple(slice(max(s.start - gap, 0), s.stop + gap) for s in lesion)] = False
    structure[:, :, : low[2] - 2] &= rng.random(shape)[:, :, : low[2] - 2] < 0.1  # thinner below the lesion
    points = np.argwhere(np.ones([s.stop - s.start for s in lesion], dtype=bool)) + low
    expected = ndimage.distance_transform_edt(~structure, sampling=spacing, return_distances=False, return_indices=True)
    found = _nearest_voxels(structure, points, np.array(spacing))
    np.testing.assert_array_equal(found, expected[(slice(None), *points.T)].T)
    distance = np.linalg.norm((found - points) * spacing, axis=1)
    tissue = np.argwhere(structure)
    ties = sum(
        int(np.count_nonzero(np.isclose(np.linalg.norm((tissue - p) * spacing, axis=1), d)) > 1)
        for p, d in zip(points, distance, strict=True)
    )
    assert spacing[0] != 1.0 or ties > 0  # points with more than one nearest voxel: the ties are broken alike


@pytest.mark.parametrize("spacing", SPACINGS)
def test_a_structure_found_out_of_reach_has_no_gap_within_reach(spacing: tuple[float, ...]) -> None:
    """Wherever ``_may_reach`` rules a structure voxel out, the gap of every lesion voxel to it exceeds the reach."""
    reach = 10.0
    sampling = np.array(spacing)
    lesion = np.zeros((9, 9, 9), dtype=bool)
    lesion[3:6, 3:6, 3:6] = True
    lesion[2, 4, 4] = True
    points = np.argwhere(lesion) + 20
    structure = np.zeros((64, 64, 64), dtype=bool)
    ruled_out = within_reach = 0
    extent = [2 * int(reach / s) + 14 for s in spacing]  # up to 7 voxels beyond the reach on either side
    rng = np.random.default_rng(0)
    planes = [o for o in np.ndindex(*extent) if any(o[a] == extent[a] // 2 for a in range(3))]  # through the lesion
    for offset in planes + [tuple(o) for o in rng.integers(0, extent, size=(1000, 3))]:
        voxel = np.array(offset) + 24 - np.array([int(reach / s) + 7 for s in spacing])
        structure[tuple(voxel)] = True
        gaps = _box_gap((voxel - points).astype(float), sampling)
        if not _may_reach(structure, points, sampling, reach):
            ruled_out += 1
            assert gaps.min() > reach, (voxel, gaps.min())
        within_reach += int(gaps.min() <= reach)
        structure[tuple(voxel)] = False
    assert ruled_out > 100 and within_reach > 100


def chest_with_lesions() -> tuple[np.ndarray, np.ndarray]:
    hu, mask = chest(), np.zeros(SHAPE, dtype=bool)
    add_box(hu, mask, (166, 50, 24), (174, 58, 28))  # against the right lateral chest wall
    add_box(hu, mask, (77, 30, 32), (85, 36, 36))  # against the mediastinum
    add_sphere(hu, mask, (-45.0, 0.0, 10.0), 6.0)  # inside the left lung
    return hu, mask


@pytest.mark.parametrize(("axis", "start", "stop"), [(0, 3, 9), (1, 0, 10), (2, 4, 5), (0, 0, 13)])
def test_nearest_mask_voxels_along_lines_in_a_box_as_along_every_whole_line(axis: int, start: int, stop: int) -> None:
    rng = np.random.default_rng(axis + start)
    mask = rng.random((13, 10, 11)) < 0.15
    mask[:, :, 2] = False  # lines with no mask voxel at all
    before, after = nearest_along_lines(mask, axis, start, stop)
    moved = np.moveaxis(mask, axis, 0)
    expected_before = np.full((stop - start, *moved.shape[1:]), -1)
    expected_after = np.full((stop - start, *moved.shape[1:]), moved.shape[0])
    for i, j in np.ndindex(*moved.shape[1:]):
        hits = np.flatnonzero(moved[:, i, j])
        for position in range(start, stop):
            earlier, later = hits[hits <= position], hits[hits >= position]
            if earlier.size:
                expected_before[position - start, i, j] = earlier.max()
            if later.size:
                expected_after[position - start, i, j] = later.min()
    np.testing.assert_array_equal(before, np.moveaxis(expected_before, 0, axis))
    np.testing.assert_array_equal(after, np.moveaxis(expected_after, 0, axis))


def _calipers_slice_by_slice(lesion: np.ndarray, affine: np.ndarray) -> tuple[float, int, np.ndarray, np.ndarray]:
    """The longest axial caliper as a plain loop over every slice finds it (the first slice of equal lengths)."""
    axis = axial_axis(affine)
    in_plane = [a for a in range(3) if a != axis]
    columns = affine[:3, in_plane]
    to_plane = columns.T @ np.linalg.qr(columns)[0]
    best = None
    for k in np.flatnonzero(np.any(lesion, axis=tuple(in_plane))):
        points = np.argwhere(_boundary(np.take(lesion, k, axis=axis))).astype(float)
        length, a, b = caliper_diameter(points, to_plane)
        if best is None or length > best[0]:
            best = (length, int(k), a, b)
    return best


def _grid(spacing: tuple[float, float, float], degrees: float, axial: int, shear: float = 0.0) -> np.ndarray:
    """An affine with the given voxel size, turned ``degrees`` about world z, the second in-plane axis sheared by
    ``shear`` (a fraction of the first's direction), its axial voxel axis ``axial``."""
    turn = np.radians(degrees)
    rotation = np.array([[np.cos(turn), -np.sin(turn), 0], [np.sin(turn), np.cos(turn), 0], [0, 0, 1]])
    rotation[:, 1] = (rotation[:, 1] + shear * rotation[:, 0]) / np.hypot(1.0, shear)
    order = [0, 1]
    order.insert(axial, 2)  # the voxel axis that runs along world z
    affine = np.eye(4)
    affine[:3, :3] = rotation[:, order] * np.array(spacing)
    return affine


def _random_lesion(rng: np.random.Generator, trial: int, axial: int) -> np.ndarray:
    """Blobs, scattered voxels, a box (equal sections on several slices) or one straight line on each slice."""
    shape = rng.integers(3, 18, size=3)
    kind = trial % 4
    if kind == 0:
        return ndimage.binary_opening(rng.random(shape) < 0.6)
    if kind == 1:
        return rng.random(shape) < 0.3
    lesion = np.zeros(shape, dtype=bool)
    if kind == 2:
        lesion[1:-1, 1:-1, 1:-1] = True
        return lesion
    for k in range(shape[axial]):  # a line along a row, a column or a diagonal: bounds as tight as they get
        section = np.take(lesion, k, axis=axial)  # a view: drawing on it draws on the lesion
        step = [(1, 0), (0, 1), (1, 1), (1, -1)][rng.integers(4)]
        row, column = rng.integers(0, section.shape[0]), rng.integers(0, section.shape[1])
        for _ in range(rng.integers(1, max(section.shape) + 1)):
            if 0 <= row < section.shape[0] and 0 <= column < section.shape[1]:
                section[row, column] = True
            row, column = row + step[0], column + step[1]
    return lesion


@pytest.mark.parametrize(
    ("spacing", "degrees", "axial", "shear"),
    [
        ((0.7, 0.7, 2.5), 0.0, 2, 0.0),
        ((0.9, 0.6, 1.2), 30.0, 2, 0.0),
        ((1.0, 2.0, 0.8), 0.0, 1, 0.0),
        ((0.8, 0.8, 0.8), 45.0, 0, 0.0),
        ((0.6, 1.5, 1.0), 10.0, 2, -0.8),
        ((0.6, 1.5, 1.0), 10.0, 2, 0.8),
    ],
)
def test_longest_axial_caliper_from_the_slices_that_may_hold_it_as_from_every_slice(
    spacing: tuple[float, float, float], degrees: float, axial: int, shear: float
) -> None:
    rng = np.random.default_rng(axial)
    affine = _grid(spacing, degrees, axial, shear)
    assert axial_axis(affine) == axial
    for trial in range(40):
        lesion = _random_lesion(rng, trial, axial)
        if not lesion.any():
            continue
        length, k, a, b = _calipers_slice_by_slice(lesion, affine)
        found = axial_calipers(lesion, affine)
        assert found["long_mm"] == length and found["slice"] == k, f"trial {trial}"
        np.testing.assert_array_equal(np.delete(found["ends"], axial, axis=1), np.stack([a, b]))


@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.uint8, np.int8, np.uint16, np.float32, np.float64])
@pytest.mark.parametrize("threshold", [-500.0, -400.0, -500.5, -399.25, 0.0, 127.5, 200.0, -3000.0, 70000.0])
def test_hu_thresholds_in_the_cts_own_type_as_in_float64(dtype: type, threshold: float) -> None:
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    low, high = (max(info.min, -3100), min(info.max, 3100)) if info else (-3100, 3100)
    values = np.random.default_rng(0).integers(low, high + 1, size=4000).astype(dtype)
    values[:6] = np.clip([-501, -500, -499, -401, -400, -399], low, high).astype(dtype)  # both sides of each edge
    exact = values.astype(np.float64)
    np.testing.assert_array_equal(hu_above(values, threshold), exact > threshold)
    np.testing.assert_array_equal(hu_below(values, threshold), exact < threshold)
    out = np.empty(values.shape, dtype=bool)
    assert hu_above(values, threshold, out=out) is out and np.array_equal(out, exact > threshold)


@pytest.mark.parametrize("factors", [(3, 3, 2), (1, 2, 4), (5, 1, 1)])
def test_coarse_grid_upsampled_by_runs_as_by_gathering_every_voxel(factors: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(sum(factors))
    coarse = rng.integers(0, 6, size=(7, 5, 6)).astype(np.uint8)
    for _ in range(10):
        # a box of the full grid, its coarse voxels clipped to the grid's last one (as a short last block is)
        starts = [int(rng.integers(0, n * f)) for n, f in zip(coarse.shape, factors, strict=True)]
        stops = [int(rng.integers(s + 1, n * f + 4)) for s, n, f in zip(starts, coarse.shape, factors, strict=True)]
        index = [
            np.minimum(np.arange(a, b) // f, n - 1)
            for a, b, f, n in zip(starts, stops, factors, coarse.shape, strict=True)
        ]
        np.testing.assert_array_equal(upsample(coarse, index), coarse[np.ix_(*index)])


@pytest.mark.parametrize("order", ["C", "F", "view"])
def test_lesions_from_their_voxels_group_by_group_as_labelled_in_the_whole_array(order: str) -> None:
    rng = np.random.default_rng(len(order))
    counts = []
    for trial in range(60):
        shape = tuple(int(n) for n in rng.integers(1, 24, size=3))
        values = (rng.random(shape) < [0.01, 0.05, 0.2, 0.6][trial % 4]).astype(np.uint8) * 3  # any non-zero value
        if order == "F":
            values = np.asfortranarray(values)
        elif order == "view":
            values = np.asfortranarray(np.pad(values, 2))[1:-1:, ::-1, 2:]  # strided, reversed, offset
        labels, count = label_lesions(values)
        counts.append(count)
        found = lesion_components(values)
        assert len(found) == count
        for index, (box, lesion) in enumerate(found, start=1):
            assert box == ndimage.find_objects(labels)[index - 1]
            np.testing.assert_array_equal(lesion, labels[box] == index)
        np.testing.assert_array_equal(nonzero_voxels(values), np.argwhere(values))
    assert max(counts) >= 10 and 1 in counts  # sparse trials hold many lesions, dense ones run into one another


@pytest.mark.parametrize("factors", [(3, 3, 2), (1, 2, 4), (5, 1, 1)])
def test_coarse_tumour_sampled_in_its_box_as_sampled_from_the_whole_mask(factors: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(sum(factors))
    for _ in range(40):
        shape = tuple(int(n) for n in rng.integers(1, 20, size=3))
        mask = np.zeros(shape, dtype=np.uint8)
        low = [int(rng.integers(0, n)) for n in shape]
        high = [int(rng.integers(a, n)) + 1 for a, n in zip(low, shape, strict=True)]
        box = tuple(slice(a, b) for a, b in zip(low, high, strict=True))
        mask[box] = rng.random([b - a for a, b in zip(low, high, strict=True)]) < 0.5
        np.testing.assert_array_equal(
            sample_nonzero(np.asfortranarray(mask), factors, box), _sample(mask, factors) != 0
        )


def test_a_uint8_mask_of_any_value_gives_the_boolean_masks_report() -> None:
    hu, mask = chest_with_lesions()
    probability = np.where(mask, 0.9, 0.1).astype(np.float32)
    expected = tumour_report(mask, AFFINE, hu, probability=probability)
    assert expected["lesion_count"] == 3 and any(lesion["touches_chest_wall"] for lesion in expected["lesions"])
    for stored in (mask.astype(np.uint8), mask.astype(np.uint8) * 7):
        found = tumour_report(stored, AFFINE, hu, probability=probability)
        assert json.dumps(found, sort_keys=True) == json.dumps(expected, sort_keys=True)


@pytest.mark.parametrize("workers", [2, 3, 1000])
def test_lungs_found_in_slabs_of_slices_side_by_side_as_in_one(workers: int) -> None:
    hu, _ = chest_with_lesions()
    alone = thorax_masks(hu, AFFINE, workers=1)
    shared = thorax_masks(hu, AFFINE, workers=workers)  # 1000: more threads than coarse slices, one slice each
    body = hu_above(_sample(hu, coarse_factors(voxel_spacing(AFFINE))), BODY_MIN_HU)  # every coarse slice, once
    assert alone.coarse_lungs.sum() > 1000 and shared.coarse_lungs.shape == body.shape
    np.testing.assert_array_equal(shared.coarse_body, body)
    np.testing.assert_array_equal(shared.coarse_lungs, alone.coarse_lungs)


@pytest.mark.parametrize("workers", [2, 5])
def test_report_steps_run_side_by_side_give_the_report_of_one_thread(workers: int) -> None:
    hu, mask = chest_with_lesions()
    probability = np.where(mask, 0.9, 0.1).astype(np.float32)
    alone = tumour_report(mask, AFFINE, hu, probability=probability, workers=1)
    touching = [(lesion["touches_chest_wall"], lesion["touches_mediastinum"]) for lesion in alone["lesions"]]
    assert alone["lesion_count"] == 3 and len(set(touching)) == 3  # each lesion's flags tell it from the others
    shared = tumour_report(mask, AFFINE, hu, probability=probability, workers=workers)
    assert json.dumps(shared) == json.dumps(alone)  # the same fields in the same order


@pytest.mark.parametrize("workers", [1, 2])
def test_a_report_kept_to_one_thread_runs_in_the_calling_thread(workers: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder's reports keep to one thread (the next scan's inference has the other cores): every step, the
    lungs' slabs included, then runs in the thread that asked for the report."""
    import threading

    import lung_tumor.report as report
    import lung_tumor.thorax as thorax

    ran_in = set()

    def spy(function):  # noqa: ANN001, ANN202
        def recorded(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            ran_in.add(threading.get_ident())
            return function(*args, **kwargs)

        return recorded

    for module, name in ((report, "_contacts"), (report, "_lesion_entry"), (thorax, "_body_and_air")):
        monkeypatch.setattr(module, name, spy(getattr(module, name)))
    hu, mask = chest_with_lesions()
    assert tumour_report(mask, AFFINE, hu, workers=workers)["lesion_count"] == 3
    if workers == 1:
        assert ran_in == {threading.get_ident()}
    else:
        assert threading.get_ident() not in ran_in and len(ran_in) >= 2  # the pools' threads


def _pixels(uri: str) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as picture:
        return np.asarray(picture)


@pytest.mark.parametrize("storage", ["RAS", "LPS"])
def test_page_pictures_from_lesion_crops_match_pictures_from_whole_masks(storage: str, tmp_path: Path) -> None:
    hu, mask = chest_with_lesions()
    affine = AFFINE
    if storage == "LPS":
        (hu, affine), (mask, _) = to_lps(hu, AFFINE), to_lps(mask, AFFINE)
    ct = np.round(hu).astype(np.int16)  # as predict reads a CT: integer HU, drawn without a float copy
    report = tumour_report(mask, affine, ct)
    page = write_report_html(report, mask.astype(np.uint8), ct, affine, tmp_path / "case_report.html").read_text()
    uris = re.findall(r'src="(data:image/png;base64,[^"]+)"', page)
    assert len(uris) == len(report["recist"]["target_lesions"]) == 2
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    for number, uri in zip(report["recist"]["target_lesions"], uris, strict=True):
        lesion = report["lesions"][number - 1]
        alone = labels == labels[tuple(int(round(c)) for c in lesion["centroid_voxel"])]
        volume = _DisplayVolume(hu.astype(np.float32), affine, {})
        volume.masks["lesion"] = _displayed(alone, affine)  # the whole displayed grid
        np.testing.assert_array_equal(_pixels(uri), _pixels(_png_data_uri(lesion_picture(volume, lesion))))

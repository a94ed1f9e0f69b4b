"""``lung-tumor preprocess``: turn an MSD-layout dataset into the 2D slice cache (see docs/slice_cache.md).

Each case goes through :func:`lung_tumor.transforms.pipeline.preprocess_transforms` and is stored
slice-major (``image[z]`` is one axial slice) so that training reads random slices from memory-mapped
arrays. A case is finished when its ``meta.json`` exists with the key of its input files and the
preprocessing config; re-running skips finished cases, and since every file is written atomically
(``meta.json`` last), a killed run resumes where it stopped with no corrupt file.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from lung_tumor.config import PreprocessConfig, config_hash, load_config
from lung_tumor.data.msd import Case, list_cases
from lung_tumor.errors import LungTumorError
from lung_tumor.io import write_atomic, write_json, write_npy
from lung_tumor.lock import folder_lock
from lung_tumor.outputs import OutputPlan
from lung_tumor.transforms.pipeline import apply_transforms, check_label, load_volume, preprocess_transforms

log = logging.getLogger(__name__)

CACHE_VERSION = 1
INDEX_COLUMNS = ("case", "slice", "source_slice", "tumour_pixels")


def file_signature(path: Path | None) -> dict[str, Any] | None:
    """What identifies an input file cheaply: its resolved path, size and modification time."""
    if path is None:
        return None
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def case_key(case: Case, cfg: PreprocessConfig) -> str:
    """The key a finished case is stored under: its input files and the preprocessing config."""
    content = {
        "version": CACHE_VERSION,
        "image": file_signature(case.image),
        "label": file_signature(case.label),
        "preprocess": cfg.cache_key_content,
    }
    return config_hash(content)


def is_finished(case_dir: Path, key: str) -> bool:
    """Whether ``case_dir`` holds a complete case written with ``key``."""
    meta = case_dir / "meta.json"
    if not meta.is_file():
        return False
    try:
        return json.loads(meta.read_text()).get("key") == key
    except (json.JSONDecodeError, OSError):
        return False


def load_case(case: Case) -> dict[str, Any]:
    """Load a case's image and label (decoded in parallel: gzip releases the GIL) and check that they match."""
    with ThreadPoolExecutor(2) as pool:
        image = pool.submit(load_volume, case.image, "image")
        label = None if case.label is None else pool.submit(load_volume, case.label, "label")
        data = {"image": image.result()}
        if label is not None:
            data["label"] = label.result()
            check_label(data["image"], data["label"], case.label)
    return data


def slice_major(volume: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    """A (1, X, Y, Z) volume as a C-contiguous (Z, Y, X) array: one axial slice per contiguous block.

    (Z, Y, X) is the memory order the chain keeps from NIfTI files, so this is usually no transposing copy.
    """
    return volume[0].permute(2, 1, 0).to(dtype).contiguous().numpy()


def preprocess_case(case: Case, cfg: PreprocessConfig, case_dir: Path, key: str) -> dict[str, Any]:
    """Preprocess one case into ``case_dir`` and return its metadata.

    Raises:
        LungTumorError: an input file is missing, unreadable, of the wrong shape or has bad label values.
    """
    data = load_case(case)
    original_shape = [int(s) for s in data["image"].shape[1:]]
    original_affine = data["image"].affine.numpy()
    keys = tuple(data)
    out = apply_transforms(preprocess_transforms(cfg, keys=keys, crop=True), data)  # consumes ``data``

    volume = out["image"]
    slice_axis = int(np.argmax(np.abs(original_affine[2, :3])))  # the voxel axis closest to world z
    crop_start = original_shape[slice_axis] - int(volume.shape[3])
    image_zhw = slice_major(volume, torch.float16)
    (case_dir / "meta.json").unlink(missing_ok=True)
    write_npy(case_dir / "image.npy", image_zhw)
    tumour_pixels = np.zeros(image_zhw.shape[0], dtype=np.int64)
    if "label" in out:
        label_zhw = slice_major(out["label"], torch.uint8)  # nearest-neighbour resampling kept it 0/1
        write_npy(case_dir / "label.npy", label_zhw)
        tumour_pixels = label_zhw.reshape(label_zhw.shape[0], -1).sum(axis=1)
    affine = volume.affine.numpy()
    meta = {
        "case": case.case_id,
        "key": key,
        "source_image": str(case.image),
        "source_label": None if case.label is None else str(case.label),
        "original_shape": original_shape,
        "original_affine": original_affine.tolist(),
        "crop_start": crop_start,
        "num_slices": int(image_zhw.shape[0]),
        "shape_zhw": list(image_zhw.shape),
        "affine": affine.tolist(),
        "spacing": np.linalg.norm(affine[:3, :3], axis=0).round(6).tolist(),
        "tumour_voxels": int(tumour_pixels.sum()),
        "tumour_pixels": tumour_pixels.tolist(),
    }
    write_json(case_dir / "meta.json", meta)
    return meta


def _worker(case: Case, cfg: PreprocessConfig, case_dir: Path, key: str, threads: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    threadpool_limits(threads)  # NumPy's BLAS too: each worker gets its share of the cores, not all of them
    logging.basicConfig(level=logging.WARNING)
    return preprocess_case(case, cfg, case_dir, key)


def write_index(cache_dir: Path, cfg: PreprocessConfig, metas: list[dict[str, Any]]) -> dict[str, Any]:
    """Write ``slices.csv`` (one row per cached slice) and ``cache.json``, both atomically; returns the latter."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(INDEX_COLUMNS)
    for meta in metas:
        for z, pixels in enumerate(meta["tumour_pixels"]):
            writer.writerow((meta["case"], z, z + meta["crop_start"], pixels))
    write_atomic(cache_dir / "slices.csv", lambda f: f.write(buffer.getvalue()))
    summary = {
        "version": CACHE_VERSION,
        "preprocess": cfg.cache_key_content,
        "cases": [m["case"] for m in metas],
        "num_slices": sum(m["num_slices"] for m in metas),
        "num_tumour_slices": sum(int(np.count_nonzero(m["tumour_pixels"])) for m in metas),
    }
    write_json(cache_dir / "cache.json", summary)
    return summary


def run_cases(todo: list[Case], cfg: PreprocessConfig, cache_dir: Path, keys: dict[str, str], bar: tqdm) -> None:
    """Preprocess ``todo`` in this process or in ``cfg.num_workers`` worker processes."""
    workers = min(cfg.num_workers, len(todo))
    if workers <= 1:
        for case in todo:
            preprocess_case(case, cfg, cache_dir / "cases" / case.case_id, keys[case.case_id])
            bar.update()
    else:
        threads = max(1, (os.cpu_count() or 1) // workers)
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            futures = [
                pool.submit(_worker, c, cfg, cache_dir / "cases" / c.case_id, keys[c.case_id], threads) for c in todo
            ]
            try:
                for future in as_completed(futures):
                    future.result()
                    bar.update()
            except BaseException:
                for future in futures:
                    future.cancel()
                raise


def preprocess_dataset(
    root: str | Path,
    cache_dir: str | Path,
    cfg: PreprocessConfig,
    cases: list[str] | None = None,
    progress: bool = True,
) -> Path:
    """Preprocess the training cases of an MSD-layout dataset into a slice cache.

    Args:
        root: dataset folder with ``dataset.json``.
        cache_dir: output folder; finished cases in it are reused.
        cfg: the ``preprocess`` section.
        cases: restrict to these case ids (default: every training case).
        progress: show a progress bar.

    Returns:
        ``cache_dir``.

    Raises:
        LungTumorError: ``cache_dir`` is unsafe (an input, a file, unwritable: :class:`~lung_tumor.outputs.OutputPlan`),
            or a case cannot be read or has inconsistent files; cases finished before it are kept.
    """
    root, cache_dir = Path(root), Path(cache_dir)
    all_cases = list_cases(root, "training")
    if cases is not None:
        unknown = sorted(set(cases) - {c.case_id for c in all_cases})
        if unknown:
            raise LungTumorError(f"case(s) not in dataset.json: {unknown}", root / "dataset.json")
        all_cases = [c for c in all_cases if c.case_id in set(cases)]
    if not all_cases:
        raise LungTumorError("dataset.json lists no training cases", root / "dataset.json")
    for case in all_cases:
        for path in (case.image, case.label):
            if path is not None and not path.exists():
                raise LungTumorError("file listed in dataset.json not found", path)

    plan = OutputPlan(inputs=[p for c in all_cases for p in (c.image, c.label) if p is not None])
    for folder in [cache_dir, *(cache_dir / "cases" / c.case_id for c in all_cases)]:
        plan.add_folder(folder)
    plan.check()
    # one writer per cache: two runs with different settings would mix their arrays under one case's key
    with folder_lock(cache_dir, what="slice cache"):
        keys = {c.case_id: case_key(c, cfg) for c in all_cases}
        todo = [c for c in all_cases if not is_finished(cache_dir / "cases" / c.case_id, keys[c.case_id])]
        log.info(
            "preprocess: %d cases, %d already cached, %d to do -> %s",
            len(all_cases),
            len(all_cases) - len(todo),
            len(todo),
            cache_dir,
        )
        with tqdm(total=len(todo), desc="preprocess", unit="case", disable=not progress) as bar:
            run_cases(todo, cfg, cache_dir, keys, bar)
        metas = [json.loads((cache_dir / "cases" / c.case_id / "meta.json").read_text()) for c in all_cases]
        summary = write_index(cache_dir, cfg, metas)
        log.info(
            "preprocess: %d slices (%d with tumour) in %s",
            summary["num_slices"],
            summary["num_tumour_slices"],
            cache_dir,
        )
    return cache_dir


def data_section(parser: Any) -> tuple[Path, Path]:
    """The dataset root and cache folder named by a config's ``data`` section."""
    data = parser.get("data", None)
    if not isinstance(data, dict) or "root" not in data or "cache_dir" not in data:
        raise LungTumorError("config needs data.root and data.cache_dir", getattr(parser, "config_path", None))
    return Path(parser.get_parsed_content("data::root")), Path(parser.get_parsed_content("data::cache_dir"))


def preprocess_from_config(config: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Path:
    """``lung-tumor preprocess --config FILE``: read ``data`` and ``preprocess`` and build the cache."""
    parser = load_config(config, overrides)
    root, cache_dir = data_section(parser)
    cfg = PreprocessConfig.from_dict(parser.get_parsed_content("preprocess", default={}))
    return preprocess_dataset(root, cache_dir, cfg)

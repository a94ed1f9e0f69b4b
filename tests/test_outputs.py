"""The output policy: no output replaces an input or a foreign file, batches survive a bad scan, kills leave no trap."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from lung_tumor.cli import main
from lung_tumor.config import PreprocessConfig
from lung_tumor.data.msd import write_dataset_json
from lung_tumor.errors import LungTumorError
from lung_tumor.io import STALE_AFTER_S, remove_stale_temporaries, temporary_prefix
from lung_tumor.outputs import written_by_lung_tumor
from lung_tumor.preprocess import preprocess_dataset
from tests.test_evaluate import write_dataset
from tests.test_inference import ORIENTATIONS, SOFT_TISSUE_HU, chest, dice, make_run, save, write_bad

REPO_ROOT = Path(__file__).resolve().parents[1]
SHAPE = (64, 64, 8)


def checksums(folder: Path, undated: bool = False) -> dict[str, str]:
    """sha256 of every file under ``folder`` (hidden ones included), by relative path.

    ``undated``: the reports' date stamps (which differ between two runs) are left out of their checksums.
    """
    return {
        str(p.relative_to(folder)): hashlib.sha256(
            re.sub(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", b"DATE", p.read_bytes())
            if undated and "_report." in p.name
            else p.read_bytes()
        ).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def scans(folder: Path, *names: str) -> Path:
    """A folder of small chest CTs, one per name."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        save(chest(SHAPE), ORIENTATIONS["RAS"], folder / name)
    return folder


def predict(capsys: pytest.CaptureFixture, run: Path, source: Path, out: Path, *extra: str) -> tuple[int, list[str]]:
    """``lung-tumor predict``: the exit status and the non-empty lines on stderr."""
    capsys.readouterr()
    status = main(["predict", "--run", str(run), "--input", str(source), "--output", str(out), *extra])
    progress = "predict: "  # tqdm's bar over a batch
    return status, [line for line in capsys.readouterr().err.splitlines() if line.strip() and progress not in line]


def assert_mask(path: Path) -> None:
    """``path`` is a marked mask that finds the soft tissue of :func:`chest`."""
    image = nib.load(path)
    assert image.shape == SHAPE and written_by_lung_tumor(path)
    assert dice(np.asarray(image.dataobj) > 0, chest(SHAPE) > SOFT_TISSUE_HU) > 0.85


@pytest.mark.parametrize("overwrite", [(), ("--overwrite",)])
def test_output_folder_that_is_the_input_folder_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture, overwrite: tuple[str, ...]
) -> None:
    run = make_run(tmp_path / "run")
    folder = scans(tmp_path / "scans", "lung_001.nii.gz", "lung_002.nii.gz")
    before = checksums(folder)
    status, errors = predict(capsys, run, folder, folder, *overwrite)
    assert status == 1 and len(errors) == 1
    assert errors[0].startswith(f"lung-tumor: error: {folder / 'lung_001.nii.gz'}: is an input of this command")
    assert checksums(folder) == before


@pytest.mark.parametrize("link", [False, True])
def test_output_file_that_is_the_input_is_refused_even_with_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture, link: bool
) -> None:
    run = make_run(tmp_path / "run")
    folder = scans(tmp_path / "scans", "ct.nii.gz")
    target = folder / "ct.nii.gz"
    if link:  # another name for the same file
        (tmp_path / "out").mkdir()
        target = tmp_path / "out" / "mask.nii.gz"
        target.symlink_to(folder / "ct.nii.gz")
    before = checksums(folder)
    status, errors = predict(capsys, run, folder / "ct.nii.gz", target, "--overwrite")
    assert status == 1 and len(errors) == 1
    assert errors[0].startswith(f"lung-tumor: error: {target}: is an input of this command")
    assert checksums(folder) == before and not (folder / "ct_report.json").exists()


def test_output_inside_an_input_dicom_folder_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = make_run(tmp_path / "run")
    series = tmp_path / "dicom"
    series.mkdir()
    (series / "IM0001").write_bytes(b"\x00" * 200)  # refused before anything reads it
    status, errors = predict(capsys, run, series, series / "masks")
    assert status == 1 and len(errors) == 1
    assert errors[0].startswith(f"lung-tumor: error: {series / 'masks' / 'dicom.nii.gz'}: lies inside the input folder")
    assert sorted(p.name for p in series.iterdir()) == ["IM0001"]


def test_a_file_where_the_output_folder_goes_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = make_run(tmp_path / "run")
    folder = scans(tmp_path / "scans", "ct.nii.gz")
    blocker = tmp_path / "results"
    blocker.write_text("the user's notes\n")
    status, errors = predict(capsys, run, folder, blocker / "masks")
    assert status == 1 and errors == [f"lung-tumor: error: {blocker}: exists as a file; a folder is needed here"]
    assert blocker.read_text() == "the user's notes\n"


def test_a_folder_where_an_output_file_goes_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = make_run(tmp_path / "run")
    folder = scans(tmp_path / "scans", "ct.nii.gz")
    (tmp_path / "out" / "ct_report.json").mkdir(parents=True)
    status, errors = predict(capsys, run, folder, tmp_path / "out")
    report = tmp_path / "out" / "ct_report.json"
    assert status == 1 and errors == [f"lung-tumor: error: {report}: exists as a folder; a file is needed here"]
    assert not (tmp_path / "out" / "ct.nii.gz").exists()


def test_unwritable_output_folder_is_refused_before_the_model_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = make_run(tmp_path / "run")
    (run / "checkpoints" / "best.pt").unlink()  # loading the model would fail: the output check comes first
    folder = scans(tmp_path / "scans", "ct.nii.gz")
    if os.geteuid() == 0:  # root ignores permission bits; sysfs refuses new files to root as well
        out = Path("/sys/lung-tumor-test/out")
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        out = locked / "out"
    status, errors = predict(capsys, run, folder, out)
    assert status == 1 and len(errors) == 1
    assert errors[0].startswith(f"lung-tumor: error: {out}: output folder cannot be written")
    assert not out.exists()


def test_a_file_lung_tumor_did_not_write_needs_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = make_run(tmp_path / "run")
    folder = scans(tmp_path / "scans", "ct.nii.gz")
    out = scans(tmp_path / "out", "ct.nii.gz")  # someone else's file where the mask goes
    before, theirs = checksums(folder), checksums(out)
    status, errors = predict(capsys, run, folder, out)
    assert status == 1 and errors == [
        f"lung-tumor: error: {out / 'ct.nii.gz'}: exists and was not written by lung-tumor; "
        "pass --overwrite to replace it"
    ]
    assert checksums(out) == theirs
    status, errors = predict(capsys, run, folder, out, "--overwrite")
    assert status == 0 and errors == []
    assert_mask(out / "ct.nii.gz")
    assert checksums(folder) == before


def test_a_report_page_without_its_json_is_not_ours_and_no_html_leaves_it(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = make_run(tmp_path / "run")
    folder = scans(tmp_path / "scans", "ct.nii.gz")
    out = tmp_path / "out"
    out.mkdir()
    (out / "ct_report.html").write_text("<p>the radiologist's own page</p>\n")
    status, errors = predict(capsys, run, folder, out)
    assert status == 1 and len(errors) == 1 and "ct_report.html: exists and was not written by lung-tumor" in errors[0]
    assert not (out / "ct.nii.gz").exists()  # refused before any work
    assert predict(capsys, run, folder, out, "--no-html") == (0, [])
    assert (out / "ct_report.html").read_text() == "<p>the radiologist's own page</p>\n"
    assert sorted(p.name for p in out.iterdir()) == ["ct.nii.gz", "ct_report.html", "ct_report.json", "ct_report.txt"]


def test_a_report_text_without_its_json_is_not_ours(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = make_run(tmp_path / "run")
    folder = scans(tmp_path / "scans", "ct.nii.gz")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "ct_report.txt").write_text("the radiologist's own report\n")
    status, errors = predict(capsys, run, folder, tmp_path / "out")
    assert status == 1 and len(errors) == 1 and "ct_report.txt: exists and was not written by lung-tumor" in errors[0]
    assert (tmp_path / "out" / "ct_report.txt").read_text() == "the radiologist's own report\n"
    assert not (tmp_path / "out" / "ct.nii.gz").exists()  # refused before any work


def test_rerun_over_its_own_outputs_needs_no_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = make_run(tmp_path / "run")
    folder = scans(tmp_path / "scans", "lung_001.nii.gz", "lung_002.nii.gz")
    before = checksums(folder)
    out = tmp_path / "out"
    assert predict(capsys, run, folder, out, "--probabilities") == (0, [])
    first = checksums(out, undated=True)
    assert predict(capsys, run, folder, out, "--probabilities") == (0, [])
    assert checksums(out, undated=True) == first and checksums(folder) == before
    assert sorted(first) == sorted(
        f"lung_00{i}{end}"
        for i in (1, 2)
        for end in (".nii.gz", "_probability.nii.gz", "_report.json", "_report.txt", "_report.html")
    )
    assert all(written_by_lung_tumor(out / name) for name in first if not name.endswith((".txt", ".html")))


def test_two_inputs_writing_one_output_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = make_run(tmp_path / "run")
    folder = scans(tmp_path / "scans", "ct.nii", "ct.nii.gz")
    status, errors = predict(capsys, run, folder, tmp_path / "out")
    assert status == 1 and errors == [
        f"lung-tumor: error: {tmp_path / 'out' / 'ct.nii.gz'}: two inputs would write this output: "
        f"{folder / 'ct.nii'} and {folder / 'ct.nii.gz'}"
    ]
    assert not (tmp_path / "out").exists()


def batch_with_a_bad_scan(tmp_path: Path) -> tuple[Path, Path]:
    folder = scans(tmp_path / "scans", "lung_001.nii.gz", "lung_003.nii.gz")
    bad = write_bad("corrupt", tmp_path)
    return folder, bad.rename(folder / "lung_002.nii.gz")


def test_a_batch_goes_on_past_a_bad_scan(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = make_run(tmp_path / "run")
    folder, bad = batch_with_a_bad_scan(tmp_path)
    before = checksums(folder)
    status, errors = predict(capsys, run, folder, tmp_path / "out")
    assert status == 1 and len(errors) == 2
    assert errors[0].startswith(f"lung-tumor: error: {bad}: cannot read image")
    assert errors[1] == f"lung-tumor: error: {folder}: 1 of 3 scans failed, 2 segmented; each failure is reported above"
    assert_mask(tmp_path / "out" / "lung_001.nii.gz")
    assert_mask(tmp_path / "out" / "lung_003.nii.gz")
    assert not (tmp_path / "out" / "lung_002.nii.gz").exists()
    assert checksums(folder) == before


def test_fail_fast_stops_at_the_bad_scan(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = make_run(tmp_path / "run")
    folder, bad = batch_with_a_bad_scan(tmp_path)
    status, errors = predict(capsys, run, folder, tmp_path / "out", "--fail-fast")
    assert status == 1 and len(errors) == 1 and errors[0].startswith(f"lung-tumor: error: {bad}: cannot read image")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "lung_001.nii.gz",
        "lung_001_report.html",
        "lung_001_report.json",
        "lung_001_report.txt",
    ]


def distinct_scans(folder: Path) -> Path:
    """Three small chest CTs that differ: a second nodule in the second, a third in the third."""
    folder.mkdir(parents=True)
    for index in range(3):
        image = chest(SHAPE)
        image[8 : 14 + 4 * index, 20:26, 2:6] = 30  # a nodule of its own size in each scan
        save(image, ORIENTATIONS["RAS"], folder / f"lung_00{index + 1}.nii.gz")
    return folder


def test_a_folder_writes_each_scan_while_the_next_is_segmented_and_as_one_by_one(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mask and reports of a scan are written while the next scan is segmented, never two scans behind, and
    byte for byte as segmenting and writing each scan in turn writes them."""
    import threading

    import lung_tumor.inference as inference

    run = make_run(tmp_path / "run")
    folder = distinct_scans(tmp_path / "scans")
    cases = [f"lung_00{i}" for i in (1, 2, 3)]
    segmenting = {case: threading.Event() for case in cases}
    events: list[str] = []
    overlapped = []
    real_predict_file, real_write = inference.Predictor.predict_file, inference.write_prediction

    def predict_file(self, prepared):  # noqa: ANN001, ANN202
        case = prepared.source.name.removesuffix(".nii.gz")
        events.append(f"segment {case}")
        segmenting[case].set()
        return real_predict_file(self, prepared)

    def write_prediction(result, paths, workers=None):  # noqa: ANN001, ANN202
        case = result.source.name.removesuffix(".nii.gz")
        following = f"lung_00{int(case[-1]) + 1}"
        if following in segmenting:  # the next scan is segmented before this write ends
            overlapped.append(segmenting[following].wait(30))
        real_write(result, paths, workers)
        events.append(f"written {case}")

    monkeypatch.setattr(inference.Predictor, "predict_file", predict_file)
    monkeypatch.setattr(inference, "write_prediction", write_prediction)
    assert predict(capsys, run, folder, tmp_path / "out") == (0, [])
    assert overlapped == [True, True]
    assert events.index("written lung_001") < events.index("segment lung_003")  # one write in flight at most
    assert sorted(events) == sorted([f"segment {case}" for case in cases] + [f"written {case}" for case in cases])
    monkeypatch.undo()

    sequential = tmp_path / "sequential"
    sources = sorted(folder.iterdir())
    predictor = inference.Predictor(run)
    for source, paths in zip(sources, inference.plan_outputs(sources, sequential, run), strict=True):
        inference.write_prediction(predictor.predict_file(source), paths)
    found = checksums(tmp_path / "out", undated=True)
    assert found == checksums(sequential, undated=True)
    assert len(found) == 12 and len({found[f"{case}.nii.gz"] for case in cases}) == 3  # three different masks


@pytest.mark.parametrize(("precision", "folder_threads"), [("bfloat16", 2), ("float32", 3)])
def test_a_folder_leaves_a_core_to_its_reader_and_writer_in_bfloat16(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, precision: str, folder_threads: int
) -> None:
    """A batch in bfloat16 segments with one torch thread fewer than the cores (the read and the write have the
    other), in float32 with all of them, and writes each report in one thread; a single scan segments with all
    of them and leaves the report its default (all cores); the count is restored afterwards."""
    import torch

    import lung_tumor.inference as inference

    run = make_run(tmp_path / "run")
    folder = distinct_scans(tmp_path / "scans")
    threads, report_workers = [], []
    real_predict_file, real_write = inference.Predictor.predict_file, inference.write_prediction

    def predict_file(self, prepared):  # noqa: ANN001, ANN202
        threads.append(torch.get_num_threads())
        return real_predict_file(self, prepared)

    def write_prediction(result, paths, workers=None):  # noqa: ANN001, ANN202
        report_workers.append(workers)
        real_write(result, paths, workers)

    monkeypatch.setattr(inference.Predictor, "predict_file", predict_file)
    monkeypatch.setattr(inference, "write_prediction", write_prediction)
    monkeypatch.setattr(inference, "available_cores", lambda: 3)
    before = torch.get_num_threads()
    try:
        assert predict(capsys, run, folder, tmp_path / "out", "--precision", precision) == (0, [])
        assert threads == [folder_threads] * 3 and torch.get_num_threads() == 3  # as the Predictor set it, 3 cores
        assert report_workers == [1, 1, 1]
        assert predict(capsys, run, folder / "lung_001.nii.gz", tmp_path / "one", "--precision", precision) == (0, [])
        assert threads[3:] == [3] and report_workers[3:] == [None]
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("fail_fast", [False, True])
def test_a_scan_whose_write_fails_is_reported_in_its_turn(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, fail_fast: bool
) -> None:
    import lung_tumor.inference as inference

    run = make_run(tmp_path / "run")
    folder = distinct_scans(tmp_path / "scans")
    real_write = inference.write_prediction

    def write_prediction(result, paths, workers=None):  # noqa: ANN001, ANN202
        if result.source.name == "lung_002.nii.gz":
            raise LungTumorError("cannot be written: disk full", paths["mask"])
        real_write(result, paths, workers)

    monkeypatch.setattr(inference, "write_prediction", write_prediction)
    out = tmp_path / "out"
    status, errors = predict(capsys, run, folder, out, *(("--fail-fast",) if fail_fast else ()))
    assert status == 1
    assert errors[0] == f"lung-tumor: error: {out / 'lung_002.nii.gz'}: cannot be written: disk full"
    names = sorted(p.name for p in out.iterdir())
    if fail_fast:
        assert errors == errors[:1]
        assert names == ["lung_001.nii.gz", "lung_001_report.html", "lung_001_report.json", "lung_001_report.txt"]
    else:
        assert errors[1:] == [
            f"lung-tumor: error: {folder}: 1 of 3 scans failed, 2 segmented; each failure is reported above"
        ]
        assert [n for n in names if n.endswith(".nii.gz")] == ["lung_001.nii.gz", "lung_003.nii.gz"]
        mask, image = (np.asarray(nib.load(f / "lung_003.nii.gz").dataobj) for f in (out, folder))
        assert dice(mask > 0, image > SOFT_TISSUE_HU) > 0.85  # the third scan's own nodules
        assert len(names) == 8


def test_hidden_files_in_the_input_folder_are_not_inputs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = make_run(tmp_path / "run")
    folder = scans(tmp_path / "scans", "lung_001.nii.gz")
    (folder / ".lung_001.x.tmp.nii.gz").write_bytes(b"half a file")  # what a killed writer leaves
    before = checksums(folder)
    assert predict(capsys, run, folder, tmp_path / "out") == (0, [])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "lung_001.nii.gz",
        "lung_001_report.html",
        "lung_001_report.json",
        "lung_001_report.txt",
    ]
    assert checksums(folder) == before


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_only_temporaries_of_gone_writers_are_removed(tmp_path: Path) -> None:
    mine = temporary_prefix("lung_001")
    dead = mine.replace(f"-{os.getpid()}.", f"-{dead_pid()}.")
    alive = mine.replace(f"-{os.getpid()}.", "-1.")  # init runs as long as the machine does
    files = {
        "dead": tmp_path / f"{dead}abcd1234.tmp.nii.gz",
        "alive": tmp_path / f"{alive}abcd1234.tmp.nii.gz",
        "mine": tmp_path / f"{mine}abcd1234.tmp.json",
        "old": tmp_path / ".lung_002.efgh5678.tmp.nii.gz",  # no host-pid: judged by age
        "young": tmp_path / ".lung_003.efgh5678.tmp.nii.gz",
        "user": tmp_path / ".notes.tmp",
        "visible": tmp_path / "x.host-1.abcd1234.tmp.nii.gz",
    }
    for path in files.values():
        path.write_bytes(b"partial")
    long_ago = files["old"].stat().st_mtime - STALE_AFTER_S - 60
    os.utime(files["old"], (long_ago, long_ago))
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted([files["dead"], files["old"]])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for k, p in files.items() if k not in ("dead", "old")
    )


KILL_DURING_WRITE = """
import os, signal, sys
import lung_tumor.nifti_gzip

def save_then_die(image, path):
    with open(path, "wb") as handle:
        handle.write(b"half a mask")
    os.kill(os.getpid(), signal.SIGKILL)

lung_tumor.nifti_gzip.write_nifti_image = save_then_die
from lung_tumor.cli import main
from lung_tumor.config import PreprocessConfig
from lung_tumor.data.msd import write_dataset_json
from lung_tumor.errors import LungTumorError
sys.exit(main(sys.argv[1:]))
"""


def test_a_prediction_killed_during_its_write_reruns_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = make_run(tmp_path / "run")
    folder = scans(tmp_path / "scans", "lung_001.nii.gz", "lung_002.nii.gz")
    before = checksums(folder)
    out = tmp_path / "out"
    args = ["predict", "--run", str(run), "--input", str(folder), "--output", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    killed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(KILL_DURING_WRITE), *args], env=env, capture_output=True, timeout=300
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    left = [p.name for p in out.iterdir()]
    assert len(left) == 1 and left[0].startswith(".lung_001.") and left[0].endswith(".tmp.nii.gz")
    assert predict(capsys, run, folder, out) == (0, [])
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"lung_00{i}{end}" for i in (1, 2) for end in (".nii.gz", "_report.json", "_report.txt", "_report.html")
    )
    assert_mask(out / "lung_001.nii.gz")
    assert_mask(out / "lung_002.nii.gz")
    assert checksums(folder) == before


def test_evaluate_refuses_a_foreign_summary_and_reruns_over_its_own(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = make_run(tmp_path / "run")
    write_dataset(tmp_path / "data", count=2)
    before = checksums(tmp_path / "data")
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").write_text('{"dice": 0.9}\n')  # someone's earlier results
    command = ["evaluate", "--run", str(run), "--data", str(tmp_path / "data"), "--all", "--output", str(out)]
    capsys.readouterr()
    assert main(command) == 1
    assert capsys.readouterr().err.strip() == (
        f"lung-tumor: error: {out / 'summary.json'}: exists and was not written by lung-tumor; "
        "pass --overwrite to replace it"
    )
    assert checksums(out) == {"summary.json": hashlib.sha256(b'{"dice": 0.9}\n').hexdigest()}
    assert main([*command, "--overwrite"]) == 0
    written = checksums(out)
    assert {"summary.json", "per_case.csv", "pictures/synth_000_overlay.png", "pictures/synth_001_overlay.png"} <= set(
        written
    )
    assert all(written_by_lung_tumor(out / name) for name in written if not name.endswith(".csv"))
    assert main(command) == 0  # its own results, pictures included, need no --overwrite
    assert sorted(checksums(out)) == sorted(written) and checksums(tmp_path / "data") == before


def test_visualize_refuses_to_write_into_its_input_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_dataset(tmp_path / "data", count=1)
    image = tmp_path / "data" / "imagesTr" / "synth_000.nii.gz"
    before = checksums(tmp_path / "data")
    capsys.readouterr()
    assert main(["visualize", "--image", str(image), "--output", str(image), "--overwrite"]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"lung-tumor: error: {image}: is an input file of this command") and "\n" not in error
    assert checksums(tmp_path / "data") == before


def test_synth_never_overwrites_a_real_dataset(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    real = tmp_path / "Task06_Lung"
    scans(real / "imagesTr", "lung_001.nii.gz")
    write_dataset_json(real, ["lung_001"], [])
    before = checksums(real)
    capsys.readouterr()
    assert main(["synth", "--out", str(real), "--cases", "1", "--test-cases", "0"]) == 1
    assert capsys.readouterr().err.strip() == (
        f"lung-tumor: error: {real / 'dataset.json'}: exists and was not written by lung-tumor; "
        "pass --overwrite to replace it"
    )
    assert checksums(real) == before


def test_preprocess_refuses_a_cache_folder_that_is_an_input(tmp_path: Path) -> None:
    write_dataset(tmp_path / "data", count=1)
    image = tmp_path / "data" / "imagesTr" / "synth_000.nii.gz"
    before = checksums(tmp_path / "data")
    with pytest.raises(LungTumorError, match="is an input file of this command"):
        preprocess_dataset(tmp_path / "data", image, PreprocessConfig(), progress=False)
    with pytest.raises(LungTumorError, match="exists as a file; a folder is needed here"):
        preprocess_dataset(tmp_path / "data", image / "cache", PreprocessConfig(), progress=False)
    assert checksums(tmp_path / "data") == before

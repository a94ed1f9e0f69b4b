"""Post-processing chosen on validation data (``lung-tumor tune``), stored beside the model and used by predict."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage
from test_geometry import make_shift_run, predict_cli, read_mask
from test_heap import batches_keeping_freed_memory
from test_predict_cli import LESIONS, found, four_lesions

from lung_tumor.cli import main
from lung_tumor.data.msd import write_dataset_json
from lung_tumor.errors import LungTumorError
from lung_tumor.evaluation.tune import _Case, choose, score_settings
from lung_tumor.inference import Predictor, average_slices, interpolate_slices, network_slice_count
from lung_tumor.postprocessing import DEFAULT, PostProcessing, load_postprocessing


def write_settings(run: Path, **settings) -> None:
    (run / "postprocess.json").write_text(json.dumps({"generator": "lung-tumor tune", "settings": settings}))


@pytest.fixture(scope="module")
def lesion_dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """The four-lesion phantom as a one-case MSD dataset whose label is the three lung lesions (not the wall one)."""
    folder = tmp_path_factory.mktemp("tune")
    image, masks, affine = four_lesions()
    data = folder / "data"
    (data / "imagesTr").mkdir(parents=True)
    (data / "labelsTr").mkdir()
    label = (masks["bright"] | masks["dim"] | masks["small"]).astype(np.uint8)
    nib.save(nib.Nifti1Image(image, affine), data / "imagesTr" / "lung_001.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), data / "labelsTr" / "lung_001.nii.gz")
    write_dataset_json(data, ["lung_001"], [])
    return data, data / "imagesTr" / "lung_001.nii.gz", masks


def test_stored_settings_are_the_defaults_of_predict_and_options_override_them(tmp_path: Path, lesion_dataset) -> None:
    _, source, lesions = lesion_dataset
    run = make_shift_run(tmp_path / "run", shift=(0, 0), gain=40.0)
    write_settings(run, threshold=0.5, min_lesion_mm3=200.0, lung_mask=True, flip_tta=False)
    predict_cli(run, source, tmp_path / "stored")
    mask, _ = read_mask(tmp_path / "stored" / "lung_001.nii.gz")
    assert found(mask, lesions) == {"bright", "dim"}  # small (113 mm3) and wall (far from the lungs) removed
    provenance = json.loads((tmp_path / "stored" / "lung_001_report.json").read_text())["provenance"]
    assert provenance["post_processing"] == {
        "min_lesion_mm3": 200.0,
        "lung_mask": True,
        "flip_tta": False,
        "min_depth_ratio": 0.0,
        "min_slice_mm": 0.0,
        "second_look_mm": 0.0,
    }
    text = (tmp_path / "stored" / "lung_001_report.txt").read_text()
    assert "min lesion 200 mm3, lung mask on, mirror images off, min depth ratio 0, network slices as scanned" in text

    predict_cli(run, source, tmp_path / "overridden", "--no-lung-mask", "--min-lesion-mm3", "0")
    mask, _ = read_mask(tmp_path / "overridden" / "lung_001.nii.gz")
    assert found(mask, lesions) == set(LESIONS)

    # the four balls are as deep as they are wide: a ratio of 0.5 keeps them, one of 3 keeps none
    for ratio, kept in (("0.5", set(LESIONS)), ("3", set())):
        out = tmp_path / f"ratio_{ratio}"
        predict_cli(run, source, out, "--no-lung-mask", "--min-lesion-mm3", "0", "--min-depth-ratio", ratio)
        assert found(read_mask(out / "lung_001.nii.gz")[0], lesions) == kept
        report = json.loads((out / "lung_001_report.json").read_text())
        assert report["provenance"]["post_processing"]["min_depth_ratio"] == float(ratio)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "unreadable"),
        ('{"settings": {"threshold": 1.5}}', "threshold must be in (0, 1)"),
        ('{"settings": {"treshold": 0.4}}', "unknown setting(s) ['treshold']"),
        ('{"settings": {"lung_mask": "yes"}}', "lung_mask must be true or false"),
        ('{"settings": {"min_depth_ratio": -0.1}}', "min depth ratio must be >= 0"),
        ('{"settings": {"min_slice_mm": 25}}', "min slice spacing must be in [0, 20] mm, got 25"),
        ('{"settings": {"second_look_mm": 0.05}}', "second look pixel size must be 0 (off) or in [0.1, 10] mm"),
        ('{"settings": {"second_look_support": 2}}', "second look support must be in [0, 1], got 2"),
        ("[1, 2]", "no 'settings' object"),
    ],
)
def test_a_bad_postprocess_json_is_one_line_naming_it_and_nothing_is_written(
    tmp_path: Path, lesion_dataset, capsys: pytest.CaptureFixture, content: str, message: str
) -> None:
    _, source, _ = lesion_dataset
    run = make_shift_run(tmp_path / "run", shift=(0, 0), gain=40.0)
    (run / "postprocess.json").write_text(content)
    status = main(["predict", "--run", str(run), "--input", str(source), "--output", str(tmp_path / "out")])
    error = capsys.readouterr().err.strip().splitlines()
    assert status != 0 and len(error) == 1
    assert str(run / "postprocess.json") in error[0] and message in error[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_without_postprocess_json_the_defaults_hold(tmp_path: Path) -> None:
    assert load_postprocessing(tmp_path) == DEFAULT == PostProcessing(0.5, 0.0, False, False)


def test_flip_tta_averages_the_scan_and_its_two_in_plane_mirror_images(tmp_path: Path) -> None:
    run = make_shift_run(tmp_path / "run", shift=(3, -2), gain=40.0)  # not mirror-symmetric: each flip differs
    plain = Predictor(run, precision="float32")
    mirrored = Predictor(run, precision="float32", flip_tta=True)
    volume = torch.randn(1, 40, 36, 6)
    expected = plain.probabilities(volume)
    for axis in (1, 2):  # (1, X, Y, Z): left-right and front-back, never across slices
        expected += plain.probabilities(volume.flip(axis)).flip(axis)
    torch.testing.assert_close(mirrored.probabilities(volume), expected / 3, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(plain.probabilities(volume), expected / 3, atol=1e-3)


def _case(probability: np.ndarray, truth: np.ndarray) -> _Case:
    quantised = np.round(probability * 255).astype(np.uint8)
    return _Case("c", {False: quantised, True: quantised}, truth, (1.0, 1.0, 1.0), np.eye(4), None)


def test_scores_count_false_lesions_and_tumour_free_scans() -> None:
    truth = np.zeros((20, 20, 20), dtype=bool)
    truth[2:8, 2:8, 2:8] = True  # 216 voxels
    probability = np.where(truth, 0.9, 0.0)
    probability[12:16, 12:16, 12:16] = 0.45  # a false lesion of 64 mm3 seen at threshold 0.4
    probability[18, 18, 18] = 0.9  # a one-voxel false lesion
    healthy = np.zeros_like(probability)
    healthy[10, 10, 10] = 0.95
    cases = [_case(probability, truth), _case(healthy, np.zeros_like(truth))]

    loose = score_settings(cases, PostProcessing(threshold=0.4))
    assert loose["false_lesions_per_scan"] == 1.5  # 2 in the tumour scan, 1 in the healthy one
    assert loose["dice_per_case_mean"] == pytest.approx((2 * 216 / (216 + 216 + 65)) / 2, abs=1e-4)
    assert loose["lesion_sensitivity"] == 1.0
    clean = score_settings(cases, PostProcessing(threshold=0.5, min_lesion_mm3=30.0))
    assert clean == {**clean, "dice_per_case_mean": 1.0, "false_lesions_per_scan": 0.0}

    results = [
        score_settings(cases, PostProcessing(threshold=t, min_lesion_mm3=m)) for t in (0.4, 0.5) for m in (0, 30)
    ]
    assert choose(results)["settings"] == {
        "threshold": 0.5,
        "min_lesion_mm3": 30.0,
        "lung_mask": False,
        "flip_tta": False,
        "min_depth_ratio": 0.0,
        "min_slice_mm": 0.0,
        "second_look_mm": 0.0,
        "second_look_threshold": 0.7,
        "second_look_support": 0.5,
    }


def test_network_slices_are_averaged_to_the_minimum_spacing_and_interpolated_back() -> None:
    assert network_slice_count(300, 0.625, 2.5) == 75
    assert network_slice_count(40, 5.0, 2.5) == 40  # slices already that far apart stay as scanned
    assert network_slice_count(12, 1.0, 0.0) == 12
    assert network_slice_count(3, 0.5, 20.0) == 1
    ramp = torch.arange(12, dtype=torch.float32).reshape(1, 1, 12, 1, 1).repeat(1, 1, 1, 2, 3)  # value = slice
    coarse = average_slices(ramp, 3)
    assert coarse.shape == (1, 1, 3, 2, 3) and coarse[0, 0, :, 1, 2].tolist() == [1.5, 5.5, 9.5]  # means of 4
    back = interpolate_slices(coarse, 12)
    assert back.shape == ramp.shape
    # the line is rebuilt between the averaged slices' centres (slices 1.5 to 9.5), held flat beyond them
    torch.testing.assert_close(back[0, 0, 2:10], ramp[0, 0, 2:10])
    assert back[0, 0, :2, 0, 0].tolist() == [1.5, 1.5] and back[0, 0, 10:, 0, 0].tolist() == [9.5, 9.5]
    assert average_slices(ramp, 12) is ramp and interpolate_slices(ramp, 12) is ramp


def test_min_slice_mm_feeds_the_network_averaged_slices_and_predict_keeps_the_lesions(
    tmp_path: Path, lesion_dataset
) -> None:
    _, source, lesions = lesion_dataset  # 24 slices 2.5 mm apart
    run = make_shift_run(tmp_path / "run", shift=(0, 0), gain=40.0)
    as_scanned = Predictor(run, precision="float32")
    averaged = Predictor(run, precision="float32", min_slice_mm=5.0)
    seen: list[int] = []
    averaged.network.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].shape[0]))
    volume = as_scanned.prepare(source).volume  # (1, X, Y, Z)
    got = averaged.probabilities(volume)
    assert sum(seen) == 12 and got.shape == volume.shape  # the network saw 12 slices; every slice comes back
    # the same as segmenting the slices averaged in pairs along Z (not X or Y) and interpolating back along Z
    pairs = volume.as_tensor().unflatten(3, (12, 2)).mean(4)
    expected = interpolate_slices(as_scanned.probabilities(pairs).permute(0, 3, 2, 1)[None], 24)
    torch.testing.assert_close(got, expected[0].permute(0, 3, 2, 1), rtol=0, atol=1e-5)
    assert float((got - as_scanned.probabilities(volume)).abs().max()) > 0.05  # the setting changes something

    predict_cli(run, source, tmp_path / "out", "--min-slice-mm", "5")
    mask, _ = read_mask(tmp_path / "out" / "lung_001.nii.gz")
    # the 30 HU lesions stay (the dim one at -40 HU, averaged with the lung around it, falls under this stand-in's cut)
    assert {"bright", "wall"} <= found(mask, lesions)
    labels, _ = ndimage.label(mask)
    for name in ("bright", "wall"):  # each lesion where it is along the body axis, within a slice
        marked = labels == labels[tuple(np.argwhere(lesions[name]).mean(axis=0).round().astype(int))]
        assert abs(np.argwhere(marked)[:, 2].mean() - np.argwhere(lesions[name])[:, 2].mean()) <= 1.0
    report = json.loads((tmp_path / "out" / "lung_001_report.json").read_text())
    assert report["provenance"]["post_processing"]["min_slice_mm"] == 5.0
    assert "network slices at least 5 mm apart" in (tmp_path / "out" / "lung_001_report.txt").read_text()


def test_tune_chooses_on_the_validation_cases_and_predict_then_uses_the_choice(tmp_path: Path, lesion_dataset) -> None:
    data, source, lesions = lesion_dataset
    run = make_shift_run(tmp_path / "run", shift=(0, 0), gain=40.0)
    assert main(["tune", "--run", str(run), "--data", str(data), "--cases", "lung_001"]) == 0
    content = json.loads((run / "postprocess.json").read_text())
    assert content["chosen_on"]["cases"] == ["lung_001"]
    assert len(content["results"]) == 5 * 5 * 2 * 2 * 8
    best = max(r["dice_per_case_mean"] for r in content["results"])
    assert content["chosen"]["dice_per_case_mean"] == best > content["baseline"]["dice_per_case_mean"]
    # the wall lesion is the only false one, and only the lung mask removes it without losing the small lesion
    assert content["settings"]["lung_mask"] is True and content["chosen"]["false_lesions_per_scan"] == 0
    assert content["baseline"]["false_lesions_per_scan"] == 1
    assert load_postprocessing(run) == PostProcessing(**content["settings"])

    predict_cli(run, source, tmp_path / "out")
    mask, _ = read_mask(tmp_path / "out" / "lung_001.nii.gz")
    assert found(mask, lesions) == {"bright", "dim", "small"} and not mask[lesions["wall"]].any()

    # evaluate uses the choice too, and says so
    assert main(["evaluate", "--run", str(run), "--data", str(data), "--cases", "lung_001", "--no-pictures"]) == 0
    summary = json.loads((run / "evaluation" / "summary.json").read_text())
    assert summary["post_processing"] == content["settings"]
    assert summary["lesions_false_positive_total"] == 0 and summary["dice_per_case_mean"] == pytest.approx(
        content["chosen"]["dice_per_case_mean"], abs=0.01
    )


def test_tune_on_a_validation_set_of_its_own(tmp_path: Path, lesion_dataset, capsys: pytest.CaptureFixture) -> None:
    data, _, _ = lesion_dataset
    run = make_shift_run(tmp_path / "run", shift=(0, 0), gain=40.0)
    assert main(["tune", "--run", str(run), "--data", str(data), "--all"]) == 0
    content = json.loads((run / "postprocess.json").read_text())
    assert content["chosen_on"]["cases"] == ["lung_001"]
    assert content["chosen_on"]["description"] == "all 1 labelled case(s)"
    assert content["chosen_on"]["data"] == str(data)
    assert content["settings"]["min_slice_mm"] == 0.0
    with pytest.raises(SystemExit):  # one way of naming the cases at a time
        main(["tune", "--run", str(run), "--data", str(data), "--all", "--cases", "lung_001"])
    assert "not allowed with argument" in capsys.readouterr().err

    # the slice spacing the network saw is part of every setting scored, and a later tune keeps the stored one
    assert main(["tune", "--run", str(run), "--data", str(data), "--all", "--min-slice-mm", "5"]) == 0
    content = json.loads((run / "postprocess.json").read_text())
    assert {r["settings"]["min_slice_mm"] for r in content["results"]} == {5.0}
    assert content["settings"]["min_slice_mm"] == content["baseline"]["settings"]["min_slice_mm"] == 5.0
    assert main(["tune", "--run", str(run), "--data", str(data), "--all"]) == 0
    assert load_postprocessing(run).min_slice_mm == 5.0


class _LungsOf:
    """Thorax masks reduced to what post-processing asks of them: the lungs in a box."""

    def __init__(self, lungs: np.ndarray) -> None:
        self.full = lungs

    def lungs(self, box: tuple[slice, ...]) -> np.ndarray:
        return self.full[box]


def test_tune_over_several_cases_keeps_freed_memory_for_the_next(
    tmp_path: Path, lesion_dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, _, _ = lesion_dataset
    two = tmp_path / "two"
    for folder in ("imagesTr", "labelsTr"):
        (two / folder).mkdir(parents=True)
        for case in ("lung_001", "lung_002"):
            shutil.copyfile(data / folder / "lung_001.nii.gz", two / folder / f"{case}.nii.gz")
    write_dataset_json(two, ["lung_001", "lung_002"], [])
    run = make_shift_run(tmp_path / "run", shift=(0, 0), gain=40.0)
    batches = batches_keeping_freed_memory(monkeypatch, "lung_tumor.evaluation.tune")
    assert main(["tune", "--run", str(run), "--data", str(two), "--all"]) == 0
    assert len(batches) == 1
    assert json.loads((run / "postprocess.json").read_text())["chosen_on"]["cases"] == ["lung_001", "lung_002"]


def test_tune_scores_a_case_cut_to_its_findings_as_the_whole_volume() -> None:
    from lung_tumor.evaluation.tune import MIN_DEPTH_RATIOS, MIN_LESION_MM3, THRESHOLDS, crop_to_findings, score_grid

    shape = (48, 40, 20)
    lungs = np.zeros(shape, bool)
    lungs[:10] = True
    probability = np.full(shape, 40, np.uint8)  # below every threshold
    truth = np.zeros(shape, bool)
    probability[15:19, 10:14, 8:12] = 200  # 6 mm from the lungs: kept by the lung mask
    probability[32:35, 20:23, 5:8] = 120  # 23 mm away: dropped by it
    probability[20:21, 30:31, 3:4] = 230  # a one-voxel lesion
    probability[36:46, 2:10, 14:15] = 180  # a flat false lesion (depth ratio 0.1), dropped by a depth ratio
    probability[24:27, 28:36, 11:13] = 190  # a true lesion of ratio 0.25, kept by 0.2 only
    truth[24:27, 28:36, 11:13] = True
    truth[15:19, 10:13, 8:12] = True
    truth[26:28, 5:7, 15:17] = True  # missed
    mirrored = probability.copy()
    mirrored[32:35, 20:23, 5:8] = 90
    whole = _Case("c", {False: probability, True: mirrored}, truth, (1.0, 1.0, 1.0), np.eye(4), _LungsOf(lungs))
    cut = crop_to_findings(whole)
    assert cut.truth.shape[0] < shape[0] and cut.truth.sum() == truth.sum()
    grid = list(itertools.product(THRESHOLDS, MIN_LESION_MM3, (False, True), (False, True), MIN_DEPTH_RATIOS))
    for t, m, lung, tta, ratio in grid:
        settings = PostProcessing(threshold=t, min_lesion_mm3=m, lung_mask=lung, flip_tta=tta, min_depth_ratio=ratio)
        assert score_settings([cut], settings) == score_settings([whole], settings), settings
    # the whole grid at once, with a tumour-free case beside it, as setting by setting on the whole volumes
    healthy_probability = np.zeros(shape, np.uint8)
    healthy_probability[5:8, 5:8, 5:8] = 150  # a false lesion inside the lungs
    healthy_probability[40:45, 30:35, 10:14] = 100  # 100 voxels of 3 mm3: exactly a minimum volume of the grid
    healthy_probability[20:30, 10:20, 0:1] = 200  # flat, but on the scan's first slice: never dropped as flat
    healthy = _Case(
        "h",
        {False: healthy_probability, True: healthy_probability // 2 + 30},
        np.zeros(shape, bool),
        (1.0, 2.0, 1.5),
        np.diag([1.0, 2.0, 1.5, 1.0]),
        _LungsOf(lungs),
    )
    expected = [
        score_settings(
            [whole, healthy],
            PostProcessing(threshold=t, min_lesion_mm3=m, lung_mask=lung, flip_tta=tta, min_depth_ratio=ratio),
        )
        for t, m, lung, tta, ratio in grid
    ]
    assert score_grid([cut, crop_to_findings(healthy)]) == expected
    assert len({(r["dice_per_case_mean"], r["false_lesions_per_scan"]) for r in expected}) > 5  # the grid matters
    # the lung mask drops the far lesions and keeps the near one, whose lungs lie outside the findings' own box
    for lung, false, sensitivity in ((False, 3, 2 / 3), (True, 0, 1 / 3)):  # the flat true lesion is 14 mm away
        settings = PostProcessing(threshold=0.4, min_lesion_mm3=0, lung_mask=lung, flip_tta=False)
        assert score_settings([cut], settings)["false_lesions_per_scan"] == false
        assert score_settings([cut], settings)["lesion_sensitivity"] == pytest.approx(sensitivity, abs=1e-4)
    # a depth ratio drops the flat false lesion, then the flat true one; the one cut by the scan's edge stays
    for ratio, false, sensitivity in ((0.0, 3, 2 / 3), (0.2, 2, 2 / 3), (0.3, 2, 1 / 3)):
        settings = PostProcessing(threshold=0.4, min_depth_ratio=ratio)
        assert score_settings([cut], settings)["false_lesions_per_scan"] == false
        assert score_settings([cut], settings)["lesion_sensitivity"] == pytest.approx(sensitivity, abs=1e-4)
    assert score_settings([healthy], PostProcessing(threshold=0.5, min_depth_ratio=0.4))["false_lesions_per_scan"] == 2


def test_a_second_look_too_fine_for_the_field_is_refused_before_any_scan(tmp_path: Path) -> None:
    run = make_shift_run(tmp_path / "run", shift=(0, 0), gain=40.0, image_size=128)  # 128 pixels of 2 mm
    with pytest.raises(LungTumorError, match=r"second look at 0.1 mm: .*image_size must be an integer in \[16, 2048\]"):
        Predictor(run, second_look_mm=0.1)  # 2,560 pixels
    assert Predictor(run, second_look_mm=0.5).second_look_preprocess().image_size == 512  # the same 256 mm field

"""Synthetic tumours inserted into real and synthetic CT: placement, size, HU, label, determinism, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, LoadImage
from scipy import ndimage

from lung_tumor.data.synth import synthesize_case
from lung_tumor.errors import LungTumorError
from lung_tumor.evaluation.lesions import label_lesions
from lung_tumor.report import BODY_MIN_HU, lung_mask, voxel_spacing
from lung_tumor.transforms import InsertTumour, InsertTumourd, RandInsertTumour, RandInsertTumourd, TumourSpec
from lung_tumor.transforms.tumour_insertion import equivalent_diameter_mm, estimate_noise_hu

CUBE = np.ones((3, 3, 3), dtype=bool)


def _load(path: Path) -> MetaTensor:
    return LoadImage(image_only=True, ensure_channel_first=True, dtype=None)(path)


@pytest.fixture(scope="module")
def thorax(real_ct_dir: Path) -> MetaTensor:
    return _load(real_ct_dir / "thorax-no-tumour" / "ct.nii.gz")


@pytest.fixture(scope="module")
def lidc(real_ct_dir: Path) -> MetaTensor:
    return _load(real_ct_dir / "lidc-idri-0001" / "ct.nii.gz")


@pytest.fixture(scope="module")
def synthetic() -> MetaTensor:
    """A small tumour-free synthetic case: 2.5-3 mm pixels, about 5 mm slices, L,P,S."""
    case = synthesize_case(1, seed=0, size="small", with_tumour=False)
    return MetaTensor(torch.from_numpy(case.image[None]), affine=torch.from_numpy(case.affine))


_LUNGS: dict[int, tuple[MetaTensor, np.ndarray]] = {}


def _lungs(img: MetaTensor) -> np.ndarray:
    """The HU lung mask of an image (computed once per image; the cache holds the image, so ids stay unique)."""
    if id(img) not in _LUNGS:
        _LUNGS[id(img)] = (img, lung_mask(img[0].numpy(), img.affine.numpy()))
    return _LUNGS[id(img)][1]


def check_insertion(
    img: MetaTensor,
    out: MetaTensor,
    label: MetaTensor,
    tumours: list[TumourSpec],
    location: str,
    diameter_mm: tuple[float, float],
    existing: np.ndarray | None = None,
) -> None:
    """What an insertion must satisfy, checked from the outputs and the original image alone."""
    assert out.dtype == img.dtype and out.shape == img.shape
    assert torch.equal(out.affine, img.affine)
    assert label.shape == img.shape and label.dtype == torch.uint8
    assert set(np.unique(label.numpy())) <= {0, 1}
    before, after = img[0].numpy().astype(np.float32), out[0].numpy().astype(np.float32)
    lab = label[0].numpy() > 0
    spacing = np.array(voxel_spacing(img.affine.numpy()))
    lungs = _lungs(img)
    if existing is not None:
        assert np.all(lab[existing])
        lab = lab & ~existing
    components, count = label_lesions(lab)
    assert count == len(tumours) >= 1
    changed = before != after
    # nothing changes outside the tumours and their one-voxel shell, nor outside the lung
    assert not np.any(changed & ~ndimage.binary_dilation(lab, CUBE))
    assert not np.any(changed & ~lungs)
    assert len({components[spec.centre] for spec in tumours} - {0}) == len(tumours)
    for spec in tumours:
        tumour = components == components[spec.centre]
        assert np.all(lungs[tumour])
        shell = ndimage.binary_dilation(tumour, CUBE) & ~tumour
        if location == "inside":
            assert np.all(lungs[shell])
        elif location == "pleural":
            assert np.count_nonzero(shell & ~lungs & (before > BODY_MIN_HU)) >= 3
        diameter = equivalent_diameter_mm(int(tumour.sum()), spacing)
        assert diameter_mm[0] - spacing.min() <= diameter <= diameter_mm[1] + spacing.min()
        assert abs(diameter - spec.diameter_mm) <= spacing.min()
        # every tumour voxel visibly changed, or is as dense as the tumour (vessels stay in ground glass)
        assert np.all(((np.abs(after - before) > 50) | (after > spec.mean_hu - 150))[tumour])
        # HU of the core (the edge voxels are partly lung, as in a real nodule's label)
        hu = after[ndimage.binary_erosion(tumour)]
        assert hu.size >= 5
        if spec.ground_glass:
            assert -760 < np.median(hu) < -240
        else:
            assert -40 < np.median(hu) < 100 and np.percentile(hu, 90) < 200


@pytest.mark.parametrize("location", ["inside", "pleural"])
@pytest.mark.parametrize("scan", ["thorax", "lidc"])
def test_inserts_into_real_ct_where_asked(scan: str, location: str, request: pytest.FixtureRequest) -> None:
    img = request.getfixturevalue(scan)
    insert = RandInsertTumour(count=2, diameter_mm=(8.0, 20.0), location=location, ground_glass_prob=0.3)
    insert.set_random_state(seed=1)
    lung = torch.from_numpy(_lungs(img)[None]) if scan == "lidc" else None  # the thorax finds its own
    out, label = insert(img, lung=lung)
    check_insertion(img, out, label, insert.tumours, location, (8.0, 20.0))
    if scan == "lidc":  # the -2048 padding outside the scan circle is left alone
        assert np.array_equal(out[0].numpy() == -2048, img[0].numpy() == -2048)


def test_existing_label_is_kept_and_avoided(real_ct_dir: Path, lidc: MetaTensor) -> None:
    nodule = _load(real_ct_dir / "lidc-idri-0001" / "nodule_mask_2readers.nii.gz").to(torch.uint8)
    insert = RandInsertTumour(count=3, diameter_mm=(6.0, 12.0), location="any")
    insert.set_random_state(seed=4)
    out, label = insert(lidc, nodule, torch.from_numpy(_lungs(lidc)[None]))
    existing = nodule[0].numpy() > 0
    check_insertion(lidc, out, label, insert.tumours, "any", (6.0, 12.0), existing)
    new = (label[0].numpy() > 0) & ~existing
    assert not np.any(new & ndimage.binary_dilation(existing, CUBE, iterations=2))
    assert np.array_equal(out[0].numpy()[existing], lidc[0].numpy()[existing])


def test_synthetic_case_ground_glass_anisotropic(synthetic: MetaTensor) -> None:
    insert = RandInsertTumour(count=(1, 3), diameter_mm=(15.0, 30.0), ground_glass_prob=1.0)
    insert.set_random_state(seed=2)
    out, label = insert(synthetic)
    assert all(t.ground_glass for t in insert.tumours)
    check_insertion(synthetic, out, label, insert.tumours, "any", (15.0, 30.0))


def test_same_seed_same_result_other_seed_differs(thorax: MetaTensor) -> None:
    lung = torch.from_numpy(_lungs(thorax)[None])
    results = []
    for seed in (7, 7, 8):
        insert = RandInsertTumour(diameter_mm=(10.0, 20.0))
        insert.set_random_state(seed=seed)
        results.append(insert(thorax, lung=lung))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
    assert not torch.equal(results[0][1], results[2][1])
    assert torch.equal(thorax, _load(thorax.meta["filename_or_obj"]))  # the input is not modified


def test_deterministic_twin_reproduces_and_checks_its_centre(thorax: MetaTensor) -> None:
    lung = torch.from_numpy(_lungs(thorax)[None])
    insert = RandInsertTumour(count=2, diameter_mm=(10.0, 20.0), location="pleural")
    insert.set_random_state(seed=3)
    expected = insert(thorax, lung=lung)
    again = InsertTumour([vars(t) for t in insert.tumours], location="pleural")(thorax, lung=lung)
    assert torch.equal(expected[0], again[0]) and torch.equal(expected[1], again[1])
    outside = TumourSpec(centre=(0, 0, 0), diameter_mm=10.0)
    with pytest.raises(LungTumorError, match=r"\(0, 0, 0\) is not in the allowed lung"):
        InsertTumour(outside)(thorax, lung=lung)


def test_volume_without_lung_refuses(synthetic: MetaTensor) -> None:
    solid = MetaTensor(
        torch.full_like(synthetic.as_tensor(), 40), affine=synthetic.affine, meta={"filename_or_obj": "x.nii.gz"}
    )
    with pytest.raises(LungTumorError, match=r"^x.nii.gz: no lung found"):
        RandInsertTumour()(solid)


def test_no_room_refuses(thorax: MetaTensor) -> None:
    with pytest.raises(LungTumorError, match="no place found for tumour 1 of 1 .inside, 150-200 mm"):
        RandInsertTumour(diameter_mm=(150.0, 200.0), location="inside", max_tries=3)(thorax)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"diameter_mm": (20.0, 10.0)}, "diameter_mm must be"),
        ({"diameter_mm": (0.0, 10.0)}, "diameter_mm must be"),
        ({"location": "lobe"}, "location must be one of"),
        ({"count": 0}, "count must be"),
        ({"count": (3, 2)}, "count must be"),
        ({"prob": 1.5}, "prob must be"),
        ({"hu_range": (-600.0, 0.0)}, "hu_range must be"),
        ({"ground_glass_prob": -0.1}, "ground_glass_prob must be"),
        ({"ground_glass_hu": (-300.0, 40.0)}, "ground_glass_hu must be"),
        ({"max_tries": 0}, "max_tries must be"),
    ],
)
def test_bad_parameters_raise(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RandInsertTumour(**kwargs)


def test_numpy_and_torch_inputs(synthetic: MetaTensor) -> None:
    spacing = np.array(voxel_spacing(synthetic.affine.numpy()))
    array = synthetic.numpy()
    for img in (array, torch.from_numpy(array)):
        insert = RandInsertTumour(diameter_mm=(10.0, 15.0))  # plain arrays are taken as 1 mm voxels
        insert.set_random_state(seed=0)
        out, label = insert(img)
        assert type(out) is type(img) and type(label) is type(img)
        assert out.dtype == img.dtype and label.shape == img.shape
        voxels = int(np.asarray(label).sum())
        assert abs(equivalent_diameter_mm(voxels, np.ones(3)) - insert.tumours[0].diameter_mm) <= 1.0
        # the same voxels on the real grid (about 2.7 x 2.7 x 5 mm) are three times as wide
        assert equivalent_diameter_mm(voxels, spacing) > 2.5 * insert.tumours[0].diameter_mm
    assert np.array_equal(array, synthetic.numpy())


def test_any_orientation_axial_axis_first(synthetic: MetaTensor) -> None:
    """The same scan stored (S, L, P) with an affine that says so: sizes and lung still right."""
    permuted = synthetic.as_tensor().permute(0, 3, 1, 2).contiguous()
    affine = synthetic.affine[:, [2, 0, 1, 3]]
    img = MetaTensor(permuted, affine=affine)
    insert = RandInsertTumour(diameter_mm=(15.0, 25.0), location="pleural")
    insert.set_random_state(seed=5)
    out, label = insert(img)
    check_insertion(img, out, label, insert.tumours, "pleural", (15.0, 25.0))


def test_dictionary_transforms_in_compose(synthetic: MetaTensor) -> None:
    data = {"image": synthetic, "label": torch.zeros_like(synthetic, dtype=torch.uint8)}
    pipeline = Compose([RandInsertTumourd("image", label_key="label", diameter_mm=(15.0, 25.0), count=2)])
    pipeline.set_random_state(seed=0)
    first = pipeline(data)
    pipeline.set_random_state(seed=0)
    second = pipeline(data)
    assert torch.equal(first["image"], second["image"]) and int(first["label"].sum()) > 0
    assert torch.equal(first["label"], second["label"]) and label_lesions(first["label"][0].numpy())[1] == 2
    assert int(data["label"].sum()) == 0  # the input dict's arrays are untouched

    skipped = RandInsertTumourd("image", label_key="mask", prob=0.0)({"image": synthetic})
    assert skipped["image"] is synthetic and skipped["mask"].dtype == torch.uint8 and int(skipped["mask"].sum()) == 0

    spec = TumourSpec(centre=tuple(int(c) for c in np.argwhere(_lungs(synthetic))[0]), diameter_mm=8.0)
    fixed = InsertTumourd(["image", "copy"], spec)({"image": synthetic, "copy": synthetic.clone()})
    assert torch.equal(fixed["image"], fixed["copy"]) and int(fixed["label"].sum()) > 0


def test_noise_estimate_matches_known_noise() -> None:
    rng = np.random.default_rng(0)
    hu = np.full((80, 80, 6), -1000.0, dtype=np.float32)
    hu[10:70, 10:70] = 40.0 + 20.0 * rng.standard_normal((60, 60, 6))
    box = (slice(30, 40), slice(30, 40), slice(2, 4))
    assert estimate_noise_hu(hu, box, np.array([1.0, 1.0, 2.5]), axis=2) == pytest.approx(20.0, rel=0.1)
    # a synthetic CT with 34 HU of blurred scanner noise over textured anatomy
    case = synthesize_case(2, seed=0, size="small", with_tumour=False)
    box = (slice(50, 70), slice(50, 70), slice(20, 30))
    estimate = estimate_noise_hu(case.image.astype(np.float32), box, np.array(case.spacing), axis=2)
    assert estimate == pytest.approx(case.noise_hu, rel=0.15)


def test_twin_sizes_and_inside_cut(thorax: MetaTensor) -> None:
    """Explicit tumours reach their equivalent diameter whatever the shape; ``inside`` keeps them off the border."""
    lungs = _lungs(thorax)
    spacing = np.array(voxel_spacing(thorax.affine.numpy()))
    depth = ndimage.distance_transform_edt(np.pad(lungs[1:-1, 1:-1, 1:-1], 1), sampling=spacing)  # faces count
    deep = tuple(int(c) for c in np.argwhere(depth == depth.max())[0])
    for seed in range(6):  # lobulated and spiculated shapes alike
        spec = TumourSpec(centre=deep, diameter_mm=20.0, seed=seed)
        _, label = InsertTumour(spec)(thorax, lung=torch.from_numpy(lungs[None]))
        assert abs(equivalent_diameter_mm(int(label.sum()), spacing) - 20.0) <= 0.5 * spacing.min()
    shallow = tuple(int(c) for c in np.argwhere((depth > 4) & (depth < 5))[0])  # 3 voxels below the border
    for location, touches in (("inside", False), ("any", True)):
        spec = TumourSpec(centre=shallow, diameter_mm=12.0, seed=1)
        _, label = InsertTumour(spec, location)(thorax, lung=torch.from_numpy(lungs[None]))
        tumour = label[0].numpy() > 0
        shell = ndimage.binary_dilation(tumour, CUBE) & ~tumour
        assert np.any(shell & ~lungs) == touches


def test_readme_recipe_from_files(tmp_path: Path, write_nifti) -> None:
    """LoadImaged -> Orientationd -> RandInsertTumourd on NIfTI files, as the README shows."""
    from monai.transforms import LoadImaged, Orientationd

    case = synthesize_case(3, seed=0, size="small", with_tumour=True)
    data = {
        "image": write_nifti(tmp_path / "ct.nii.gz", case.image, case.affine),
        "label": write_nifti(tmp_path / "label.nii.gz", case.label, case.affine),
    }
    load = Compose(
        [
            LoadImaged(["image", "label"], ensure_channel_first=True, dtype=None),
            Orientationd(["image", "label"], axcodes="RAS"),
        ]
    )
    augment = RandInsertTumourd("image", label_key="label", count=2, diameter_mm=(15.0, 25.0), location="pleural")
    augment.set_random_state(seed=0)
    before = load(data)
    after = augment(before)
    assert after["image"].dtype == torch.int16 and after["label"].dtype == before["label"].dtype
    assert torch.equal(after["image"].affine, before["image"].affine)
    existing = before["label"][0].numpy() > 0
    check_insertion(
        before["image"],
        after["image"],
        after["label"].to(torch.uint8),
        augment.inserter.tumours,
        "pleural",
        (15.0, 25.0),
        existing,
    )

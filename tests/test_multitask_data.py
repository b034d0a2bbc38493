"""The multi-task data sets, used the way the core uses them: validate params, call the factory."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError
from torch.nn import functional as F

from harness.api import BuildContext
from harness.data import DataBundle, Subset, stratified_indices
from harness.errors import DataError
from harness.pluginmanager import get_components
from harness_plugins import multitask_data


def build(name: str, subset: dict | None = None, **params: object) -> DataBundle:
    """Look a data set up by name in the plugin registry and build it, as the core does."""
    record = get_components().get("dataset", name).record
    validated = record.params(**params)
    return record.factory(
        validated, BuildContext(subset=None if subset is None else Subset(**subset))
    )


def test_both_data_sets_are_registered_and_usable() -> None:
    components = get_components()
    for name in ("shapes-multitask", "taskonomy"):
        record = components.get("dataset", name).record
        assert record.problems() == []
        assert record.description and "\n" not in record.description
        with pytest.raises(ValidationError):
            record.params(root="x", not_a_param=1)  # extra="forbid": a typo in a spec is an error


# ------------------------------------------------------------------------------ shapes-multitask


@pytest.fixture(scope="module")
def shapes() -> DataBundle:
    return build("shapes-multitask", train=60, test=20, size=32, seed=0)


def test_shapes_is_deterministic_per_seed_and_differs_across_seeds() -> None:
    first = build("shapes-multitask", train=20, test=10, size=16)
    again = build("shapes-multitask", train=20, test=10, size=16)
    other = build("shapes-multitask", train=20, test=10, size=16, seed=1)
    for a, b in ((first.train, again.train), (first.test, again.test)):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
        assert a.targets.keys() == b.targets.keys()
        assert all(torch.equal(a.targets[k], b.targets[k]) for k in a.targets)
    assert not torch.equal(first.train.x, other.train.x)
    # the test split has its own stream: more training images leave it unchanged
    bigger = build("shapes-multitask", train=30, test=10, size=16)
    assert torch.equal(bigger.test.x, first.test.x)


def test_shapes_targets_follow_the_conventions(shapes: DataBundle) -> None:
    n, s = 60, 32
    train = shapes.train
    assert shapes.classes == list(multitask_data.SHAPES)
    assert shapes.value_range == (0.0, 1.0) and shapes.input_shape == (3, s, s)
    assert (
        train.x.dtype == torch.float32
        and float(train.x.min()) >= 0.0
        and float(train.x.max()) <= 1.0
    )
    assert train.y.dtype == torch.int64 and train.y.shape == (n,)
    assert torch.bincount(train.y).tolist() == [12] * 5  # balanced: chance is exactly 1/5
    t = train.targets
    assert set(t) == {"segmentation", "depth", "keypoints", "scene"}
    assert t["segmentation"].dtype == torch.int64 and t["segmentation"].shape == (n, s, s)
    assert int(t["segmentation"].max()) < shapes.metadata["segmentation_classes"] == 6
    assert shapes.metadata["segmentation_class_names"] == ["background", *multitask_data.SHAPES]
    assert t["depth"].dtype == torch.float32 and t["depth"].shape == (n, 1, s, s)
    assert float(t["depth"].min()) > 0 and isinstance(shapes.metadata["depth_units"], str)
    assert t["keypoints"].dtype == torch.float32 and t["keypoints"].shape == (n, 5, s, s)
    assert float(t["keypoints"].min()) >= 0 and float(t["keypoints"].max()) <= 1
    assert shapes.metadata["keypoints"] == 5
    assert t["scene"].dtype == torch.int64 and t["scene"].shape == (n,)
    assert shapes.metadata["scene_classes"] == list(multitask_data.SCENES)
    assert set(t["scene"].tolist()) == set(range(4))
    assert len(shapes.test) == 20 and shapes.test.targets.keys() == t.keys()


def test_shapes_segmentation_carries_the_class(shapes: DataBundle) -> None:
    seg = shapes.train.targets["segmentation"]
    for i, label in enumerate(shapes.train.y.tolist()):
        assert set(seg[i].unique().tolist()) == {0, 1 + label}
        assert int((seg[i] > 0).sum()) >= 10  # the shape is visible, not a speck


def test_shapes_key_points_lie_on_the_shape(shapes: DataBundle) -> None:
    heat = shapes.train.targets["keypoints"]
    on_shape = shapes.train.targets["segmentation"] > 0
    n, k, s, _ = heat.shape
    peak = heat.flatten(2).argmax(dim=2)
    rows, cols = peak // s, peak % s
    for i in range(n):
        ring = shapes.classes[int(shapes.train.y[i])] == "ring"
        for j in range(k):
            if j < 4 or not ring:  # a ring's centroid is in its hole
                assert on_shape[i, rows[i, j], cols[i, j]], (i, multitask_data.KEYPOINT_NAMES[j])
        # extreme points sit on a pixel: their bump peaks at exactly 1
        assert torch.allclose(heat[i, :4].amax(dim=(1, 2)), torch.ones(4))
        ys, xs = torch.nonzero(on_shape[i], as_tuple=True)
        assert (rows[i, 0], rows[i, 1]) == (ys.min(), ys.max())
        assert (cols[i, 2], cols[i, 3]) == (xs.min(), xs.max())
        assert ys.min() <= rows[i, 4] <= ys.max() and xs.min() <= cols[i, 4] <= xs.max()


def test_shapes_depth_puts_the_shape_in_front(shapes: DataBundle) -> None:
    depth = shapes.train.targets["depth"][:, 0]
    on_shape = (shapes.train.targets["segmentation"] > 0).float()[:, None]
    around = (F.max_pool2d(on_shape, 5, stride=1, padding=2) - on_shape)[:, 0].bool()
    on_shape = on_shape[:, 0].bool()
    for i in range(len(depth)):
        assert float(depth[i][on_shape[i]].max()) < float(depth[i][around[i]].min())


def test_shapes_rejects_sizes_outside_16_to_64() -> None:
    record = get_components().get("dataset", "shapes-multitask").record
    for size in (8, 128):
        with pytest.raises(ValidationError):
            record.params(size=size)


# ------------------------------------------------------------------------------ taskonomy

BUILDINGS = {
    "allensville": [(0, 0), (0, 1), (1, 0)],
    "beechwood": [(2, 0), (3, 1)],
    "coffeen": [(5, 2), (7, 0)],
}
SCENE_OF = {"allensville": 3, "beechwood": 7, "coffeen": 3}  # argmax of each view's scores
SIDE = 16


def _write_view(root: Path, building: str, point: int, view: int, scene: int) -> None:
    stem = f"point_{point}_view_{view}_domain_"
    rng = np.random.default_rng(point * 10 + view)

    def path(folder: str, name: str) -> Path:
        folder_path = root / folder / building
        folder_path.mkdir(parents=True, exist_ok=True)
        return folder_path / f"{stem}{name}"

    Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)).save(
        path("rgb", "rgb.png")
    )
    seg = np.full((SIDE, SIDE), 2, dtype=np.uint8)
    seg[:, SIDE // 2 :] = 20  # not one of the 18 classes: ignored
    Image.fromarray(seg).save(path("segment_semantic", "segmentsemantic.png"))
    depth = np.full((SIDE, SIDE), 1024, dtype=np.uint16)  # 2 m
    depth[0, 0] = 65535  # invalid
    depth[SIDE - 1, SIDE - 1] = 256  # 0.5 m
    Image.fromarray(depth).save(path("depth_euclidean", "depth_euclidean.png"))
    keys = np.zeros((SIDE, SIDE), dtype=np.uint16)
    keys[4, 5] = 65535
    keys[10, 10] = 32768
    Image.fromarray(keys).save(path("keypoints2d", "keypoints2d.png"))
    scores = np.linspace(0.0, 0.1, 12).astype(np.float32)
    scores[scene] = 0.9
    np.save(path("class_scene", "class_scene.npy"), scores)


@pytest.fixture
def taskonomy_root(tmp_path: Path) -> Path:
    root = tmp_path / "taskonomy"
    for building, views in BUILDINGS.items():
        for point, view in views:
            _write_view(root, building, point, view, SCENE_OF[building])
    return root


def test_pil_reads_16_bit_pngs_losslessly(tmp_path: Path) -> None:
    values = np.array([[0, 1, 512], [1024, 40000, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "d.png")
    with Image.open(tmp_path / "d.png") as img:
        assert img.mode in ("I;16", "I")  # Pillow >= 10 keeps I;16, older versions widen to I
        assert np.array_equal(np.asarray(img).astype(np.int64), values)


def test_taskonomy_loads_every_domain_in_the_conventions(taskonomy_root: Path) -> None:
    bundle = build("taskonomy", root=str(taskonomy_root), size=SIDE)
    # default split: the last 20% of the sorted buildings, at least one
    assert bundle.metadata["train_buildings"] == ["allensville", "beechwood"]
    assert bundle.metadata["test_buildings"] == ["coffeen"]
    assert len(bundle.train) == 5 and len(bundle.test) == 2
    assert bundle.input_shape == (3, SIDE, SIDE) and bundle.value_range == (0.0, 1.0)
    assert float(bundle.train.x.min()) >= 0.0 and float(bundle.train.x.max()) <= 1.0
    # scene labels: argmax of the scores, remapped over those present
    assert bundle.classes == bundle.metadata["scene_classes"] == ["scene-3", "scene-7"]
    assert bundle.train.y.tolist() == [0, 0, 0, 1, 1] and bundle.test.y.tolist() == [0, 0]
    assert torch.equal(bundle.train.targets["scene"], bundle.train.y)
    t = bundle.train.targets
    assert t["segmentation"].shape == (5, SIDE, SIDE) and t["segmentation"].dtype == torch.int64
    assert set(t["segmentation"].unique().tolist()) == {2, 255}
    assert bundle.metadata["segmentation_classes"] == 18
    depth = t["depth"]
    assert depth.shape == (5, 1, SIDE, SIDE) and depth.dtype == torch.float32
    assert float(depth[0, 0, 0, 0]) == 0.0  # 65535: invalid
    assert float(depth[0, 0, 1, 1]) == 2.0 and float(depth[0, 0, -1, -1]) == 0.5  # metres
    assert bundle.metadata["depth_units"] == "metres"
    keys = t["keypoints"]
    assert keys.shape == (5, 1, SIDE, SIDE) and keys.dtype == torch.float32
    assert float(keys[0, 0, 4, 5]) == 1.0 and float(keys[0, 0, 10, 10]) == pytest.approx(
        0.5, abs=1e-4
    )
    assert float(keys.sum()) == pytest.approx(5 * (1 + 32768 / 65535), rel=1e-5)
    assert bundle.metadata["keypoints"] == 1


def test_taskonomy_resizes_and_keeps_only_the_domains_asked_for(taskonomy_root: Path) -> None:
    bundle = build(
        "taskonomy",
        root=str(taskonomy_root),
        size=8,
        domains=["depth", "keypoints", "segmentation"],
        test_buildings=["allensville"],
        max_per_building=1,
    )
    assert bundle.metadata["test_buildings"] == ["allensville"]
    assert len(bundle.train) == 2 and len(bundle.test) == 1
    assert bundle.input_shape == (3, 8, 8)
    t = bundle.train.targets
    assert set(t) == {"depth", "keypoints", "segmentation"} and "scene_classes" in bundle.metadata
    assert t["depth"].shape == t["keypoints"].shape == (2, 1, 8, 8) and t["segmentation"].shape == (
        2,
        8,
        8,
    )
    # nearest resampling never blends an invalid pixel into a valid one, nor two class ids
    assert set(t["depth"].unique().tolist()) <= {0.0, 0.5, 2.0}
    assert set(t["segmentation"].unique().tolist()) == {2, 255}
    # bilinear (antialiased) shrinking spreads the peaks but keeps the maps in [0, 1]
    assert 0.0 < float(t["keypoints"].max()) < 1.0 and float(t["keypoints"].min()) >= 0.0


def test_taskonomy_decodes_only_the_subset_it_is_asked_for(taskonomy_root: Path) -> None:
    y = np.array([0, 0, 0, 1, 1])  # the train views in order: allensville x3, beechwood x2
    chosen = stratified_indices(y, 2, 0)
    train_stems = [("allensville", p, v) for p, v in BUILDINGS["allensville"]]
    train_stems += [("beechwood", p, v) for p, v in BUILDINGS["beechwood"]]
    skipped = next(i for i in range(5) if i not in chosen)
    building, point, view = train_stems[skipped]
    (taskonomy_root / "rgb" / building / f"point_{point}_view_{view}_domain_rgb.png").write_bytes(
        b"not a png"
    )

    bundle = build(
        "taskonomy", subset={"train": 2, "test": None, "seed": 0}, root=str(taskonomy_root), size=8
    )
    assert bundle.train.indices.tolist() == chosen.tolist()
    assert bundle.train.y.tolist() == y[chosen].tolist()
    assert len(bundle.test) == 2 and bundle.test.indices is None
    with pytest.raises(DataError, match="cannot read RGB image"):
        build("taskonomy", root=str(taskonomy_root), size=8)


def test_taskonomy_names_a_missing_domain_folder(taskonomy_root: Path) -> None:
    missing = taskonomy_root / "keypoints2d"
    for path in missing.rglob("*"):
        if path.is_file():
            path.unlink()
    for path in sorted(missing.rglob("*"), reverse=True):
        path.rmdir()
    missing.rmdir()
    with pytest.raises(
        DataError, match=f"{re.escape(str(missing))} does not exist.*expected layout"
    ):
        build("taskonomy", root=str(taskonomy_root))
    # a domain left out of `domains` is not needed
    assert (
        "keypoints"
        not in build("taskonomy", root=str(taskonomy_root), domains=["depth"]).train.targets
    )


def test_taskonomy_names_a_missing_label_file(taskonomy_root: Path) -> None:
    missing = (
        taskonomy_root
        / "depth_euclidean"
        / "beechwood"
        / "point_3_view_1_domain_depth_euclidean.png"
    )
    missing.unlink()
    with pytest.raises(DataError, match=re.escape(str(missing))):
        build("taskonomy", root=str(taskonomy_root))


def test_taskonomy_names_a_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "nowhere"))):
        build("taskonomy", root=str(tmp_path / "nowhere"))

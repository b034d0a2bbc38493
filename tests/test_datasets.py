"""The first-party data sets, used the way the core uses them: validate params, call the factory."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from harness.api import BuildContext
from harness.archive import extract_archive
from harness.data import DataBundle, Subset, stratified_indices
from harness.errors import DataError
from harness_plugins import datasets


def build(name: str, subset: dict | None = None, **params: object) -> DataBundle:
    """Look a data set up by name and build it, as the core does from a spec."""
    record = {r.name: r for r in datasets.harness_register_datasets()}[name]
    validated = record.params(**params)
    return record.factory(
        validated, BuildContext(subset=None if subset is None else Subset(**subset))
    )


def test_every_record_is_usable() -> None:
    records = datasets.harness_register_datasets()
    assert [r.name for r in records] == [
        "digits",
        "make-classification",
        "cifar10",
        "cifar100",
        "image-folder",
    ]
    for record in records:
        assert record.problems() == []
        assert record.description and "\n" not in record.description
        with pytest.raises(ValidationError):
            record.params(not_a_param=1)  # extra="forbid": a typo in a spec is an error


# ------------------------------------------------------------------------------ digits


def test_digits_is_a_stratified_image_task_in_unit_range() -> None:
    bundle = build("digits")
    assert bundle.input_shape == (1, 8, 8) and bundle.is_image
    assert len(bundle.train) + len(bundle.test) == 1797
    assert len(bundle.test) == pytest.approx(0.2 * 1797, abs=1)
    assert bundle.classes == [str(i) for i in range(10)]
    assert bundle.value_range == (0.0, 1.0)
    assert bundle.train.x.dtype == torch.float32 and bundle.train.y.dtype == torch.int64
    assert float(bundle.train.x.min()) >= 0.0 and float(bundle.train.x.max()) == 1.0
    # stratified: every class has about the same share in both splits
    train_share = torch.bincount(bundle.train.y, minlength=10) / len(bundle.train)
    test_share = torch.bincount(bundle.test.y, minlength=10) / len(bundle.test)
    assert torch.allclose(train_share, test_share, atol=0.01)


def test_digits_split_depends_only_on_its_seed() -> None:
    first, again, other = build("digits"), build("digits"), build("digits", split_seed=1)
    assert torch.equal(first.test.x, again.test.x) and torch.equal(first.test.y, again.test.y)
    assert not torch.equal(first.test.x, other.test.x)


def test_digits_rejects_a_test_fraction_outside_zero_one() -> None:
    with pytest.raises(ValidationError):
        build("digits", test_fraction=1.0)


# ------------------------------------------------------------------------------ make-classification


def test_make_classification_gives_feature_vectors() -> None:
    bundle = build("make-classification")
    assert bundle.input_shape == (12,) and not bundle.is_image
    assert (len(bundle.train), len(bundle.test)) == (4000, 1000)
    assert bundle.value_range is None
    assert bundle.classes == [str(i) for i in range(10)]
    assert bundle.train.x.dtype == torch.float32
    assert torch.equal(build("make-classification").train.x, bundle.train.x)


def test_make_classification_refuses_too_few_informative_features() -> None:
    # scikit-learn's default n_informative=2 cannot place 10 classes on 4 hypercube vertices
    with pytest.raises(ValidationError, match=r"exceeds 2\*\*n_informative"):
        build("make-classification", n_informative=2)


# ------------------------------------------------------------------------------ CIFAR


def _pickle(path: Path, content: dict) -> None:
    path.write_bytes(pickle.dumps(content, protocol=2))


def fake_cifar10(root: Path, per_batch: int = 3) -> Path:
    """A tiny cifar-10-batches-py in torchvision's layout: 5 train batches, a test batch, meta."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        _pickle(
            folder / name,
            {
                "batch_label": name,
                "labels": [int(v) for v in rng.integers(0, 10, per_batch)],
                "data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                "filenames": [f"{name}_{i}.png" for i in range(per_batch)],
            },
        )
    names = [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    _pickle(folder / "batches.meta", {"label_names": names, "num_cases_per_batch": per_batch})
    return folder


def fake_cifar100(root: Path) -> Path:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name, n in (("train", 12), ("test", 8)):
        _pickle(
            folder / name,
            {
                "filenames": [f"{i}.png" for i in range(n)],
                "batch_label": name,
                "fine_labels": [int(v) for v in rng.integers(0, 100, n)],
                "coarse_labels": [int(v) for v in rng.integers(0, 20, n)],
                "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            },
        )
    _pickle(
        folder / "meta",
        {
            "fine_label_names": [f"fine{i}" for i in range(100)],
            "coarse_label_names": [f"c{i}" for i in range(20)],
        },
    )
    return folder


def test_cifar10_reads_torchvision_layout_from_either_root(tmp_path: Path) -> None:
    folder = fake_cifar10(tmp_path)
    from_parent = build("cifar10", root=str(tmp_path))
    from_folder = build("cifar10", root=str(folder))
    assert (len(from_parent.train), len(from_parent.test)) == (15, 3)
    assert from_parent.input_shape == (3, 32, 32)
    assert from_parent.classes[0] == "airplane" and from_parent.num_classes == 10
    assert torch.equal(from_parent.train.x, from_folder.train.x)
    # pixels are the stored bytes / 255 in CHW order, as torchvision would give after ToTensor()
    with (folder / "data_batch_1").open("rb") as handle:
        first = pickle.load(handle, encoding="latin1")
    expected = torch.from_numpy(first["data"][0].reshape(3, 32, 32).astype(np.float32) / 255)
    assert torch.equal(from_parent.train.x[0], expected)
    assert int(from_parent.train.y[0]) == first["labels"][0]


def test_cifar100_uses_fine_labels(tmp_path: Path) -> None:
    folder = fake_cifar100(tmp_path)
    for root in (tmp_path, folder):
        bundle = build("cifar100", root=str(root))
        assert (len(bundle.train), len(bundle.test)) == (12, 8)
        assert bundle.num_classes == 100 and bundle.classes[3] == "fine3"
        assert int(bundle.train.y.max()) < 100


def test_missing_cifar_names_the_expected_path_and_does_not_download(tmp_path: Path) -> None:
    with pytest.raises(DataError) as caught:
        build("cifar10", root=str(tmp_path / "nowhere"))
    message = str(caught.value)
    assert str(tmp_path / "nowhere" / "cifar-10-batches-py") in message
    assert "No download is attempted" in message and "CIFAR10(root, download=False)" in message


def test_missing_cifar_batch_is_named(tmp_path: Path) -> None:
    folder = fake_cifar10(tmp_path)
    (folder / "data_batch_4").unlink()
    with pytest.raises(DataError, match="data_batch_4"):
        build("cifar10", root=str(tmp_path))


def test_corrupt_cifar_pickle_is_named(tmp_path: Path) -> None:
    folder = fake_cifar10(tmp_path)
    (folder / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="test_batch"):
        build("cifar10", root=str(folder))


# ------------------------------------------------------------------------------ image-folder


def fake_image_folder(root: Path, per_class: dict[str, int], size: int = 6) -> Path:
    """train/<class>/NN.png and test/<class>/NN.png; red = 100 * the class's sorted position."""
    for split in ("train", "test"):
        for label, (name, count) in enumerate(sorted(per_class.items())):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                colour = (label * 100, i * 10, 7)
                Image.new("RGB", (size, size), colour).save(folder / f"{i:02d}.png")
    return root


def test_image_folder_loads_classes_in_sorted_order(tmp_path: Path) -> None:
    fake_image_folder(tmp_path, {"cat": 2, "ant": 3, "bee": 4})
    (tmp_path / "train" / "ant" / "notes.txt").write_text("not an image")
    bundle = build("image-folder", root=str(tmp_path))
    assert bundle.classes == ["ant", "bee", "cat"]
    assert bundle.train.y.tolist() == [0, 0, 0, 1, 1, 1, 1, 2, 2]
    assert bundle.input_shape == (3, 6, 6) and bundle.value_range == (0.0, 1.0)
    assert bundle.train.indices is None
    # the red channel encodes the class, decoded to [0, 1]
    red = bundle.train.x[:, 0, 0, 0] * 255
    assert torch.allclose(red, bundle.train.y.float() * 100)


def test_image_folder_resizes_and_converts_to_grey(tmp_path: Path) -> None:
    fake_image_folder(tmp_path, {"a": 2, "b": 2})
    Image.new("RGB", (9, 4)).save(tmp_path / "train" / "a" / "wide.png")
    bundle = build("image-folder", root=str(tmp_path), image_size=5, channels=1)
    assert bundle.input_shape == (1, 5, 5)
    assert len(bundle.train) == 5


def test_image_folder_without_image_size_refuses_mixed_sizes(tmp_path: Path) -> None:
    fake_image_folder(tmp_path, {"a": 2, "b": 2})
    odd = tmp_path / "train" / "b" / "99.png"
    Image.new("RGB", (7, 6)).save(odd)
    with pytest.raises(DataError, match=str(odd)):
        build("image-folder", root=str(tmp_path))


def test_image_folder_errors_name_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=f"image-folder root {tmp_path / 'missing'} does not exist"):
        build("image-folder", root=str(tmp_path / "missing"))
    fake_image_folder(tmp_path, {"a": 1, "b": 1})
    with pytest.raises(DataError, match="valid"):
        build("image-folder", root=str(tmp_path), test_dir="valid")
    (tmp_path / "train" / "c").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        build("image-folder", root=str(tmp_path))
    Image.new("RGB", (6, 6)).save(tmp_path / "train" / "c" / "0.png")
    (tmp_path / "test" / "d").mkdir()
    Image.new("RGB", (6, 6)).save(tmp_path / "test" / "d" / "0.png")
    with pytest.raises(DataError, match="class folders differ"):
        build("image-folder", root=str(tmp_path))
    (tmp_path / "test" / "d").rename(tmp_path / "test" / "c")
    (tmp_path / "train" / "c" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(DataError, match="broken.jpg"):
        build("image-folder", root=str(tmp_path), image_size=6)


def test_image_folder_subset_decodes_only_the_chosen_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_image_folder(tmp_path, {"a": 6, "b": 6, "c": 6})
    full = build("image-folder", root=str(tmp_path))
    decoded: list[int] = []
    real_decode = datasets.decode_images

    def counting_decode(paths: list[Path], *args: object, **kwargs: object) -> torch.Tensor:
        decoded.append(len(paths))
        return real_decode(paths, *args, **kwargs)

    monkeypatch.setattr(datasets, "decode_images", counting_decode)
    small = build("image-folder", subset={"train": 6, "test": None, "seed": 3}, root=str(tmp_path))
    assert decoded == [6, 18]  # six train files, the whole test split
    expected = stratified_indices(full.train.y.numpy(), 6, 3)  # what the core would have drawn
    assert small.train.indices is not None and small.train.indices.dtype == torch.int64
    assert small.train.indices.tolist() == expected.tolist()
    assert torch.equal(small.train.x, full.train.x[small.train.indices])
    assert torch.bincount(small.train.y).tolist() == [2, 2, 2]
    assert small.test.indices is None and len(small.test) == 18


def test_list_image_folder_matches_labels_to_paths(tmp_path: Path) -> None:
    fake_image_folder(tmp_path, {"x": 2, "y": 1})
    paths, labels, classes = datasets.list_image_folder(tmp_path, "test")
    assert classes == ["x", "y"]
    assert [p.parent.name for p in paths] == ["x", "x", "y"] and labels.tolist() == [0, 0, 1]


# ------------------------------------------------------------------------------ extract_archive


def _tar_xz(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:xz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_extract_archive_unpacks_once_into_dest(tmp_path: Path) -> None:
    archive = _tar_xz(tmp_path / "data.tar.xz", {"train/a/0.txt": b"hello"})
    dest = tmp_path / "cache" / "data"
    assert extract_archive(archive, dest) == dest
    assert (dest / "train" / "a" / "0.txt").read_bytes() == b"hello"
    assert (dest / ".complete").is_file()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["data"]  # no partial left behind
    archive.unlink()  # a completed destination is reused without touching the archive
    assert extract_archive(archive, dest) == dest


@pytest.mark.parametrize("name", ["../evil", "/tmp/evil", "ok/../../evil"])
def test_extract_archive_refuses_members_leaving_dest(tmp_path: Path, name: str) -> None:
    archive = _tar_xz(tmp_path / "bad.tar.xz", {"fine.txt": b"ok", name: b"pwned"})
    dest = tmp_path / "cache" / "bad"
    with pytest.raises(DataError, match="refusing"):
        extract_archive(archive, dest)
    assert not dest.exists() and list((tmp_path / "cache").iterdir()) == []
    assert not (tmp_path / "evil").exists()

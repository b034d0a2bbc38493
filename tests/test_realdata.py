"""Real data: the CIFAR-10 ImageFolder archive in ../shared/data, unpacked into a cache folder.

The smoke test runs in CI (a few hundred images, two epochs); the full CPU-scale spec is marked
slow. Both skip, saying why, where the archive is not on the machine.
"""

from __future__ import annotations

import pytest
from conftest import REPO, write_spec

from harness.cli import main
from harness.entries import read_entries

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

pytestmark = pytest.mark.realdata


def test_cifar10_folder_loads_as_the_real_data_set(cifar10_folder):
    from harness.api import BuildContext, Subset
    from harness_plugins.datasets import ImageFolderParams, load_image_folder

    data = load_image_folder(
        ImageFolderParams(root=str(cifar10_folder)),
        BuildContext(subset=Subset(train=500, test=100, seed=0)),
    )
    assert data.classes == CLASSES
    assert data.input_shape == (3, 32, 32)
    assert len(data.train) == 500 and len(data.test) == 100
    assert data.train.y.bincount().tolist() == [50] * 10  # stratified
    assert float(data.train.x.min()) >= 0.0 and float(data.train.x.max()) <= 1.0
    assert 0.3 < float(data.train.x.mean()) < 0.7  # natural images, not blanks or noise


def test_a_cifar10_spec_runs_end_to_end_at_smoke_scale(cifar10_folder, tmp_path):
    spec = write_spec(
        tmp_path / "cifar-smoke.yaml",
        {
            "name": "cifar-smoke",
            "data": {
                "name": "image-folder",
                "params": {"root": str(cifar10_folder)},
                "subset": {"train": 400, "test": 200},
            },
            "backbone": {"name": "small-cnn", "params": {"width": 8, "blocks": 2}},
            "training": {"epochs": 2, "batch_size": 100, "augmentation": ["crop", "flip"]},
            "sal": {"iterations": 2, "probe_size": 64, "probe_batch_size": 64},
            "poisons": [{"name": "random-noise", "params": {"mode": "class-wise"}}],
        },
    )
    assert main(["eval", str(spec), "--output", str(tmp_path / "runs"), "--quiet"]) == 0
    entries = {e.arm_id: e for e in read_entries(tmp_path / "runs" / "cifar-smoke")}
    assert set(entries) == {"clean__none__s0", "random-noise__none__s0"}
    assert entries["clean__none__s0"].track.dataset["name"] == "image-folder"
    assert all(e.results.test_metric.final >= 0 for e in entries.values())


@pytest.mark.slow
def test_the_cpu_scale_cifar10_spec_runs(cifar10_folder, tmp_path):
    spec = (REPO / "specs" / "cifar10-folder-cpu.yaml").read_text()
    spec = spec.replace("~/.cache/harness/data/cifar10-jpg", str(cifar10_folder))
    path = tmp_path / "cifar10-folder-cpu.yaml"
    path.write_text(spec)
    assert main(["eval", str(path), "--output", str(tmp_path / "runs"), "--quiet"]) == 0
    assert len(read_entries(tmp_path / "runs" / "cifar10-folder-cpu")) == 3

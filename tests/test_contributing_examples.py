"""The plugin examples in CONTRIBUTING.md work as written: registered in-process, built the way a
spec builds them, and used once."""

from __future__ import annotations

import re
import types
from pathlib import Path

import pytest
import torch

from harness.api import BuildContext, DataBundle, PoisonContext, Split
from harness.pluginmanager import load_components

GUIDE = (Path(__file__).resolve().parents[1] / "CONTRIBUTING.md").read_text(encoding="utf-8")
BLOCKS = [b for b in re.findall(r"```python\n(.*?)```", GUIDE, re.S) if "@hookimpl" in b]


def module_of(code: str) -> types.ModuleType:
    module = types.ModuleType("contributing_example")
    exec(compile(code, "CONTRIBUTING.md", "exec"), module.__dict__)
    return module


def components_of(code: str):
    components = load_components(entry_points=False, extra_plugins=[("doc", module_of(code))])
    assert components.failures == []
    return components


def test_the_guide_has_a_poison_a_defence_and_a_backbone_example() -> None:
    hooks = " ".join(BLOCKS)
    for hook in (
        "harness_register_poisons",
        "harness_register_defences",
        "harness_register_backbones",
    ):
        assert hook in hooks


def block(hook: str) -> str:
    return next(b for b in BLOCKS if hook in b)


def test_the_poison_example_generates_within_its_budget() -> None:
    components = components_of(block("harness_register_poisons"))
    poison = components.build("poison", "my-poison", {})
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(20, 1, 8, 8, generator=g), torch.arange(20) % 4
    data = DataBundle("toy", Split(x, y), Split(x[:4], y[:4]), classes=list("abcd"))
    ctx = PoisonContext(
        seed=0, device=torch.device("cpu"), data=data, build_model=None, task_loss=None
    )
    out = poison.generate(data, ctx)
    assert out.shape == x.shape and float((out - x).abs().max()) <= poison.params.epsilon + 1e-6


def test_the_defence_examples_transform_and_train() -> None:
    components = components_of(block("harness_register_defences"))
    assert {"gaussian-noise", "label-smoothing", "flooding"} <= set(components["defence"].names())
    x = torch.rand(4, 3, 8, 8)
    noisy = components.build("defence", "gaussian-noise", {}).transform_images(x, torch.Generator())
    assert noisy.shape == x.shape and float(noisy.min()) >= 0 and float(noisy.max()) <= 1
    _, soft = components.build("defence", "label-smoothing", {}).transform_batch(
        x, torch.tensor([0, 1, 2, 3]), 4, torch.Generator()
    )
    assert torch.allclose(soft.sum(dim=1), torch.ones(4))


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 8, 8)])
def test_the_backbone_example_builds_and_refuses_features(shape) -> None:
    components = components_of(block("harness_register_backbones"))
    backbone = components.build("backbone", "tiny", {"width": 4}, BuildContext(input_shape=shape))
    assert backbone(torch.rand(2, *shape)).shape == (2, 4)
    with pytest.raises(ValueError, match="tiny needs image inputs"):
        components.build("backbone", "tiny", {}, BuildContext(input_shape=(12,)))

"""Figures, report and loss landscape from a small real run, checked for content, not existence.

The run (`small_runs["figs"]`, conftest): digits, a small CNN, clean and two random-noise arms,
3 epochs of 6 steps; the clean and the sample-wise arm save their parameters every 2 steps.
"""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from matplotlib.colors import LogNorm, to_hex

from harness import figures
from harness.assembly import Assembly
from harness.cli import main
from harness.entries import read_entries
from harness.landscape import LandscapeSettings, compute_panels, pca_plane
from harness.pluginmanager import get_components
from harness.report import build_figures, load_run
from harness.runfolder import RunFolder
from harness.runner import Runner
from harness.scoring import epoch_threshold, learnable_threshold
from harness.specfile import load_spec

ARMS = ["clean__none__s0", "noise-class__none__s0", "noise-sample__none__s0"]  # the report's order
TRACED = ["clean__none__s0", "noise-sample__none__s0"]
STEPS = list(range(0, 19, 2))  # 3 epochs × 6 steps (300 samples, batch 50), a snapshot every 2


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run several times faster on one torch thread on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def run(small_runs) -> Path:
    return small_runs["figs"]


@pytest.fixture(scope="module")
def sal(run) -> dict[str, np.ndarray]:
    with h5py.File(run / "run.h5", "r") as f:
        return {a: f["arms"][a]["sal"][()] for a in ARMS}


@pytest.fixture(scope="module")
def drawn(run):
    data = load_run(run)
    return data, build_figures(data)


def panels(fig) -> list:
    """The axes that show an arm (colour bars and twin axes carry no arm label)."""
    return [
        ax
        for ax in fig.axes
        if ax.get_label() and ":" not in ax.get_label() and ax.get_label() != "<colorbar>"
    ]


# --- the trajectory in the run file --------------------------------------------------------------


def test_traced_arms_hold_the_parameters_at_step_0_and_every_k_steps(run):
    with h5py.File(run / "run.h5", "r") as f:
        for arm in ARMS:
            g = f["arms"][arm]
            if arm not in TRACED:
                assert "trajectory" not in g
                continue
            t = g["trajectory"]
            assert t["step"][()].tolist() == STEPS
            assert t["params"].dtype == np.float32 and t["params"].maxshape == (
                None,
                t["params"].shape[1],
            )
            assert t.attrs["every_steps"] == 2
    # the last snapshot (step 18 = the last step) is the trained model, in parameters() order
    assembly = Assembly.for_run(RunFolder(run), get_components())
    model = assembly.build_model()
    model.load_state_dict(
        torch.load(run / "checkpoints" / "clean__none__s0.pt", weights_only=True)["model"]
    )
    final = torch.nn.utils.parameters_to_vector(model.parameters()).detach().numpy()
    with h5py.File(run / "run.h5", "r") as f:
        np.testing.assert_array_equal(f["arms/clean__none__s0/trajectory/params"][-1], final)
        assert f["arms/clean__none__s0/trajectory/params"].shape == (len(STEPS), final.size)
        assert not np.array_equal(f["arms/clean__none__s0/trajectory/params"][0], final)


def test_a_run_interrupted_around_the_trajectory_write_resumes_to_the_same_trajectory(
    tmp_path, monkeypatch
):
    """Killed after the epoch's snapshots are written but before its checkpoint, and killed after
    the checkpoint but before the epoch's row: either way the resumed trajectory is the reference's."""
    from conftest import tiny_spec, write_spec

    import harness.checkpoint as checkpoint_module
    import harness.runfolder as runfolder_module

    spec = write_spec(
        tmp_path / "t.yaml",
        tiny_spec(
            "t",
            backbone={"name": "linear"},
            poisons=[],
            training={"epochs": 3, "batch_size": 50, "optimizer": {"name": "sgd", "lr": 0.1}},
            sal={"iterations": 1, "probe_size": 32, "probe_batch_size": 32},
            landscape={"enabled": True, "every_steps": 4},
        ),
    )

    def run_into(out: Path) -> None:
        runner = Runner(load_spec(spec, get_components()), get_components(), output_root=out)
        runner.prepare()
        runner.run()

    def trajectory(out: Path) -> tuple[np.ndarray, np.ndarray]:
        with h5py.File(out / "t" / "run.h5", "r") as f:
            return f["arms/clean__none__s0/trajectory/step"][()], f[
                "arms/clean__none__s0/trajectory/params"
            ][()]

    run_into(tmp_path / "reference")
    steps, params = trajectory(tmp_path / "reference")
    assert steps.tolist() == [0, 4, 8, 12, 16]  # 18 steps

    class Killed(BaseException):
        pass

    for where in ("atomic_write", "append_epoch"):
        out = tmp_path / where
        calls = {"n": 0}
        real_write, real_append = (
            checkpoint_module.atomic_write,
            runfolder_module.RunStore.append_epoch,
        )

        def fake_write(path, write, _real=real_write, _where=where, _calls=calls, **kw):
            _calls["n"] += 1
            if _where == "atomic_write" and _calls["n"] == 2:
                raise Killed  # epoch 2's snapshots are in run.h5, its checkpoint is not
            return _real(path, write, **kw)

        def fake_append(store, arm, epoch, row, _real=real_append, _where=where):
            if _where == "append_epoch" and epoch == 2:
                raise Killed  # epoch 2's checkpoint is written, its row is not
            return _real(store, arm, epoch, row)

        monkeypatch.setattr(checkpoint_module, "atomic_write", fake_write)
        monkeypatch.setattr(runfolder_module.RunStore, "append_epoch", fake_append)
        with pytest.raises(Killed):
            run_into(out)
        monkeypatch.undo()
        assert trajectory(out)[0].tolist() == [0, 4, 8, 12]  # epoch 2's snapshots went in
        run_into(out)
        got_steps, got_params = trajectory(out)
        assert got_steps.tolist() == steps.tolist(), where
        np.testing.assert_array_equal(got_params, params)


def test_landscape_arms_are_checked_and_an_oversized_model_is_refused(tmp_path):
    from conftest import tiny_spec, write_spec

    from harness.errors import SpecError

    bad = write_spec(
        tmp_path / "bad.yaml",
        tiny_spec("bad", landscape={"enabled": True, "arms": ["noise-smaple"]}),
    )
    with pytest.raises(
        SpecError, match=r"bad.yaml:\d+:\d+: landscape.arms.0: .*no arm 'noise-smaple'"
    ):
        load_spec(bad, get_components())
    big = write_spec(
        tmp_path / "big.yaml", tiny_spec("big", landscape={"enabled": True, "max_params": 100})
    )
    runner = Runner(
        load_spec(big, get_components()), get_components(), output_root=tmp_path / "runs"
    )
    with pytest.raises(
        SpecError,
        match="landscape.max_params: the model has .* trainable parameters, over the limit of 100",
    ):
        runner.prepare()
    assert not (tmp_path / "runs").exists()  # refused before anything is written


def test_a_disabled_landscape_leaves_the_spec_hash_of_older_specs_unchanged(tmp_path):
    from conftest import tiny_spec, write_spec

    from harness.specfile import spec_hash

    loaded = load_spec(write_spec(tmp_path / "a.yaml", tiny_spec("a")), get_components())
    resolved = loaded.resolved()
    older = {k: v for k, v in resolved.items() if k != "landscape"}  # as written before the section
    assert spec_hash(older) == loaded.hash
    traced = load_spec(
        write_spec(tmp_path / "b.yaml", tiny_spec("a", landscape={"enabled": True})),
        get_components(),
    )
    assert traced.hash != loaded.hash


# --- SAL figures ---------------------------------------------------------------------------------


def test_sal_heatmap_has_one_panel_per_arm_the_sal_transposed_and_one_colour_scale(drawn, sal):
    data, figs = drawn
    fig = figs["sal_heatmap"]
    axes = panels(fig)
    assert [ax.get_label() for ax in axes] == ["clean", "noise-class", "noise-sample"]
    limits = set()
    for ax, arm in zip(axes, ARMS, strict=True):
        (image,) = ax.images
        np.testing.assert_array_equal(np.asarray(image.get_array()), sal[arm].T)  # layers × epochs
        limits.add(image.get_clim())
        assert ax.get_xlabel() == "epoch"
    assert len(limits) == 1 and limits.pop() == (0.0, max(s.max() for s in sal.values()))
    assert axes[0].get_ylabel() == "layer"
    assert [t.get_text() for t in axes[0].get_yticklabels()] == ["features.0", "features.3", "head"]
    assert any(ax.get_label() == "<colorbar>" and ax.get_ylabel() == "SAL" for ax in fig.axes)


def test_learnable_layers_mark_beta_of_the_clean_arm_and_count_the_layers_above_it(drawn, run, sal):
    _, figs = drawn
    entries = {e.arm_id: e for e in read_entries(run)}
    beta = entries["clean__none__s0"].results.beta
    axes = panels(figs["learnable_layers"])
    assert len(axes) == 3
    for ax, arm in zip(axes, ARMS, strict=True):
        (line,) = [ln for ln in ax.get_lines() if ln.get_label().startswith("β")]
        assert np.allclose(line.get_ydata(), beta)
        assert ax.get_ylabel() == "SAL" and ax.get_xlabel() == "epoch"
        (twin,) = [
            t for t in figs["learnable_layers"].axes if t.get_label() == f"{ax.get_label()}:count"
        ]
        (counts,) = twin.get_lines()
        assert list(counts.get_ydata()) == entries[arm].results.learnable_per_epoch
        assert f"#LP = {entries[arm].results.lp:.2f}" in ax.get_title()
    (prop,) = figs["learnable_proportion"].axes
    for line, arm in zip(prop.get_lines(), ARMS, strict=True):
        np.testing.assert_allclose(
            line.get_ydata(), np.array(entries[arm].results.learnable_per_epoch) / 3
        )
    assert prop.get_ylabel() == "learnable layers (fraction)"


def test_beta_split_shows_the_per_epoch_two_means_thresholds_and_beta(drawn, sal):
    _, figs = drawn
    fig = figs["beta_split"]
    scatter_ax = next(ax for ax in fig.axes if ax.get_label() == "clean")
    hist_ax = next(ax for ax in fig.axes if ax.get_label() == "clean:hist")
    beta, _ = learnable_threshold(sal["clean__none__s0"])
    (beta_t,) = [ln for ln in scatter_ax.get_lines() if ln.get_label() == "β_t (per epoch)"]
    np.testing.assert_allclose(
        beta_t.get_ydata(), [epoch_threshold(r) for r in sal["clean__none__s0"]]
    )
    assert np.allclose(
        [ln for ln in scatter_ax.get_lines() if ln.get_label().startswith("β =")][0].get_ydata(),
        beta,
    )
    assert np.allclose(
        [ln for ln in hist_ax.get_lines() if ln.get_label().startswith("β =")][0].get_xdata(), beta
    )
    high, low = (
        next(c for c in scatter_ax.collections if c.get_label() == name)
        for name in ("high cluster", "low cluster")
    )
    assert len(high.get_offsets()) + len(low.get_offsets()) == sal["clean__none__s0"].size


def test_training_curves_and_parameter_cdf(drawn, run):
    data, figs = drawn
    metric_ax, loss_ax = figs["training_curves"].axes
    assert metric_ax.get_ylabel() == "test accuracy" and loss_ax.get_ylabel() == "training loss"
    for arm, m_line, l_line in zip(
        data.arms, metric_ax.get_lines(), loss_ax.get_lines(), strict=True
    ):
        np.testing.assert_array_equal(m_line.get_ydata(), arm.metrics["test_metric"])
        np.testing.assert_array_equal(l_line.get_ydata(), arm.metrics["train_loss"])
    axes = {ax.get_label(): ax for ax in figs["parameter_cdf"].axes}
    value_ax, abs_ax = axes["value"], axes["magnitude"]
    assert abs_ax.get_ylabel() == "cumulative fraction"
    assert axes["value:difference"].get_xlabel().startswith("parameter value")
    state = torch.load(run / "checkpoints" / "noise-class__none__s0.pt", weights_only=True)["model"]
    weights = torch.cat([state[n].reshape(-1) for n in data.layer_names]).numpy()
    for ax in (value_ax, abs_ax):
        lines = ax.get_lines()
        assert [ln.get_label() for ln in lines] == ["clean", "noise-class", "noise-sample"]
        for line in lines:
            assert line.get_ydata()[-1] == 1.0 and line.get_ydata()[0] == 0.0
            assert np.all(np.diff(line.get_xdata()) >= 0)
    assert value_ax.get_lines()[1].get_xdata()[-1] == pytest.approx(weights.max())
    assert abs_ax.get_lines()[1].get_xdata()[-1] == pytest.approx(np.abs(weights).max())


def ecdf(values: np.ndarray, at: np.ndarray) -> np.ndarray:
    return np.array([(values <= x).mean() for x in at])


def test_parameter_cdf_has_a_difference_panel_against_the_clean_arm(drawn, run):
    """Where the CDFs coincide to the eye, the lower row shows F(arm) − F(clean) exactly."""
    data, figs = drawn
    axes = {ax.get_label(): ax for ax in figs["parameter_cdf"].axes}
    weights = {}
    for arm in ARMS:
        state = torch.load(run / "checkpoints" / f"{arm}.pt", weights_only=True)["model"]
        weights[arm] = torch.cat([state[n].reshape(-1) for n in data.layer_names]).numpy()
    for name, transform in (("value", np.asarray), ("magnitude", np.abs)):
        diff_ax = axes[f"{name}:difference"]
        zero, *lines = diff_ax.get_lines()
        assert zero.get_label() == "clean (reference)" and set(zero.get_ydata()) == {0.0}
        assert [ln.get_label() for ln in lines] == ["noise-class", "noise-sample"]
        for line, arm in zip(lines, ARMS[1:], strict=True):
            at = line.get_xdata()[::50]
            expected = ecdf(transform(weights[arm]), at) - ecdf(transform(weights[ARMS[0]]), at)
            np.testing.assert_allclose(line.get_ydata()[::50], expected, atol=1e-12)
        assert diff_ax.get_ylabel() == "F(arm) − F(its clean arm)"


# --- how arms are told apart ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def defended(tmp_path_factory) -> Path:
    """Two seeds of clean and one poison, each undefended and under cutout: eight arms, four of
    them trained on clean data, of which only the two undefended ones are the clean reference."""
    from conftest import tiny_spec, write_spec

    root = tmp_path_factory.mktemp("defended")
    spec = tiny_spec(
        "defended",
        training={"epochs": 2, "batch_size": 50, "optimizer": {"name": "sgd", "lr": 0.1}},
        sal={"iterations": 1, "probe_size": 32, "probe_batch_size": 32},
        poisons=[
            {
                "name": "random-noise",
                "label": "noise-class",
                "params": {"epsilon": 0.1, "mode": "class-wise"},
            }
        ],
        defences=["none", "cutout"],
        seeds=[0, 1],
    )
    path = write_spec(root / "defended.yaml", spec)
    assert main(["eval", str(path), "--output", str(root / "runs"), "--quiet"]) == 0
    return root / "runs" / "defended"


def line_looks(ax) -> dict[str, tuple]:
    return {
        ln.get_label(): (to_hex(ln.get_color()), str(ln.get_linestyle()), ln.get_marker())
        for ln in ax.get_lines()
    }


def test_only_the_undefended_clean_arm_is_black_and_every_arm_has_its_own_look(defended):
    data = load_run(defended)
    figs = build_figures(data)
    metric_ax = next(ax for ax in figs["training_curves"].axes if ax.get_label() == "test_metric")
    looks = line_looks(metric_ax)
    assert sorted(looks) == sorted(
        f"{arm} (seed {seed})"
        for arm in ("clean", "noise-class", "clean + cutout", "noise-class + cutout")
        for seed in (0, 1)
    )
    assert len(set(looks.values())) == len(looks)  # colour, line style and marker: never all shared
    black = {label for label, (colour, _, _) in looks.items() if colour == "#000000"}
    assert black == {"clean (seed 0)", "clean (seed 1)"}  # not "clean + cutout"
    assert (
        looks["clean (seed 0)"][1] == "-"
    )  # solid black: the undefended clean arm of the first seed
    assert looks["clean (seed 1)"][1] != "-"  # its other seed: black, another line style
    for seed in (
        0,
        1,
    ):  # within a seed every arm has its own colour, from the colour-blind-safe palette
        colours = [c for label, (c, _, _) in looks.items() if label.endswith(f"(seed {seed})")]
        assert len(set(colours)) == len(colours) == 4
        assert set(colours) - {"#000000"} <= {c.lower() for c in figures.PALETTE}
    for other in (
        "learnable_proportion",
        "parameter_cdf",
    ):  # the same arm looks the same in every figure
        ax = figs[other].axes[0]
        assert line_looks(ax) == {label: looks[label] for label in line_looks(ax)}


def test_arm_styles_never_repeat_when_arms_outnumber_the_palette():
    experiments = [f"poison-{i}" for i in range(50)]  # 50 experiments × 3 seeds, 7 colours
    keys = [figures.ArmKey("clean", "clean", 0, reference=True)] + [
        figures.ArmKey(f"{e} (seed {s})", e, s) for e in experiments for s in (0, 1, 2)
    ]
    styles = figures.arm_styles(keys)
    looks = [(st.colour, str(st.linestyle), st.marker) for st in styles.values()]
    assert len(set(looks)) == len(keys)
    first_seed = [styles[f"{e} (seed 0)"].colour for e in experiments[: len(figures.PALETTE)]]
    assert first_seed == list(figures.PALETTE)  # every palette colour before any comes round again
    assert [label for label, st in styles.items() if st.colour == figures.CLEAN_COLOUR] == ["clean"]
    # a label alone is an arm of its own, the clean reference only when it is exactly "clean"
    plain = figures.arm_styles(["clean", "clean + cutout", "clean-ish"])
    assert plain["clean"].colour == figures.CLEAN_COLOUR
    assert figures.CLEAN_COLOUR not in {plain["clean + cutout"].colour, plain["clean-ish"].colour}


# --- the log-scale SAL heat map ------------------------------------------------------------------


def test_sal_heatmap_log_scale_spans_the_positive_values_and_greys_out_zero():
    sal = np.array([[0.0, 0.002], [0.05, 3.0]])  # epochs × layers: three decades and a zero
    fig = figures.sal_heatmap(
        [("clean", sal), ("noise", sal / 10)], ["a.weight", "b.weight"], log=True
    )
    images = [ax.images[0] for ax in panels(fig)]
    for image in images:
        assert isinstance(image.norm, LogNorm)
        assert (image.norm.vmin, image.norm.vmax) == (0.0002, 3.0)  # one scale for both arms
    np.testing.assert_array_equal(np.asarray(images[0].get_array()), sal.T)
    drawn = images[0].to_rgba(images[0].get_array())  # the colours of the cells, layers × epochs
    # zero has no place on a log scale: grey, unlike any value
    assert to_hex(drawn[0, 0]) == "#bdbdbd"
    assert "#bdbdbd" not in {to_hex(c) for c in drawn.reshape(-1, 4)[1:]}
    colourbar = next(ax for ax in fig.axes if ax.get_label() == "<colorbar>")
    assert colourbar.get_ylabel() == "SAL (log scale; grey: 0)"
    assert "log colour scale" in fig.get_suptitle()
    with pytest.raises(ValueError, match="no positive SAL"):
        figures.sal_heatmap([("flat", np.zeros((2, 2)))], ["a", "b"], log=True)


def test_the_report_adds_the_log_heat_map_when_sal_spans_a_decade(drawn, sal):
    _, figs = drawn
    assert figures.sal_heatmap_log_useful([np.array([0.5, 4.9])]) is False
    assert figures.sal_heatmap_log_useful([np.array([0.0, 0.3]), np.array([3.0])]) is True
    assert ("sal_heatmap_log" in figs) == figures.sal_heatmap_log_useful(list(sal.values()))
    assert "sal_heatmap" in figs  # the paper's linear scale is always drawn
    if "sal_heatmap_log" in figs:
        (image, *_) = panels(figs["sal_heatmap_log"])[0].images
        assert isinstance(image.norm, LogNorm)


# --- loss landscape ------------------------------------------------------------------------------


def test_landscape_draws_contours_with_the_projected_trajectory_clean_beside_poisoned(run):
    settings = LandscapeSettings(grid=7, samples=128)
    drawn_panels = compute_panels(run, get_components(), None, settings, log=lambda _: None)
    assert [p.label for p in drawn_panels] == ["clean", "noise-sample"]
    with h5py.File(run / "run.h5", "r") as f:
        matrix = f["arms/clean__none__s0/trajectory/params"][()]
    path, _, explained = pca_plane(matrix, (1, 2))
    np.testing.assert_allclose(drawn_panels[0].path, path)
    fig = figures.loss_landscape(drawn_panels)
    axes = panels(fig)
    assert [ax.get_label() for ax in axes] == ["clean", "noise-sample"]
    levels, norms = [], []
    for ax, panel in zip(axes, drawn_panels, strict=True):
        (trajectory,) = [ln for ln in ax.get_lines() if ln.get_label() == "trajectory"]
        assert trajectory.get_xydata().shape == (len(STEPS), 2)
        np.testing.assert_allclose(trajectory.get_xydata(), panel.path)
        filled = next(c for c in ax.collections if getattr(c, "filled", False))
        levels.append(tuple(filled.levels))
        norms.append((filled.norm.vmin, filled.norm.vmax))
        assert panel.loss.shape == (7, 7) and np.isfinite(panel.loss).all()
        assert ax.get_xlabel().startswith("PC1 (") and ax.get_ylabel().startswith("PC2 (")
    assert len(set(levels)) == 1 and len(set(norms)) == 1  # one colour scale for every arm
    lo = min(p.loss.min() for p in drawn_panels)
    hi = max(p.loss.max() for p in drawn_panels)
    assert norms[0] == pytest.approx((lo, hi))
    assert explained[0] >= explained[1] > 0
    assert f"{explained[0]:.1%}" in axes[0].get_xlabel()


def test_landscape_command_third_and_fourth_components_and_refusals(run, capsys):
    assert (
        main(
            [
                "landscape",
                str(run),
                "--arms",
                "clean",
                "--components",
                "3,4",
                "--grid",
                "5",
                "--samples",
                "64",
            ]
        )
        == 0
    )
    out = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert (
        out == run / "figures" / "landscape_pc3-4.png"
        and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    )
    assert main(["landscape", str(run), "--components", "10,11"]) == 2
    assert "only components 1 to 9 carry variance" in capsys.readouterr().err
    assert main(["landscape", str(run), "--arms", "noise-class"]) == 2
    assert "saved no trajectory" in capsys.readouterr().err


# --- the report page -----------------------------------------------------------------------------


def test_report_page_embeds_every_figure_the_entries_and_the_resolved_spec(run, capsys):
    assert main(["report", str(run)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    page, paths = Path(lines[-1].removeprefix("report: ")), [Path(line) for line in lines[:-1]]
    assert page == run / "report.html"
    stems = {p.stem for p in paths}
    assert {
        "sal_heatmap",
        "learnable_layers",
        "learnable_proportion",
        "beta_split",
        "training_curves",
        "parameter_cdf",
    } <= stems
    text = page.read_text()
    images = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert sorted(a for a, _ in images) == sorted(stems)
    for name, encoded in images:
        assert base64.b64decode(encoded) == (run / "figures" / f"{name}.png").read_bytes()
    table = text[text.index('<table class="entries">') : text.index("</table>")]
    for e in read_entries(run):
        assert f"<td>{e.arm_id}</td>" in table and f"<td>{e.results.ud:.3f}</td>" in table
    spec = html.unescape(re.search(r'<pre id="spec">(.*?)</pre>', text, re.S).group(1))
    with h5py.File(run / "run.h5", "r") as f:
        assert json.loads(spec) == json.loads(f.attrs["spec"])
    assert "http://" not in text and "https://" not in text  # self-contained

"""The hooks a harness plugin implements: one per kind of component.

Each hook takes no argument and returns a list of typed records (`harness.api`). Plugins are
found through the `harness` entry-point group, exactly as pytest and llm find theirs; a module
named by an entry point implements any of these hooks, marked with `harness.api.hookimpl`.

The rules every hook shares:

- record names are lower-case letters, digits and `. _ : -` (they become parts of file names);
  a name another installed plugin already registered is an error, never a silent override;
- a record's `factory` is called as `factory(params, context)`: `params` an instance of the
  record's `params` model (validated from the spec, defaults filled in), `context` a
  `BuildContext`; what it returns must be an instance of the kind's base class;
- every check of a parameter belongs in the `params` model, so that `harness validate` reports it
  with the spec's file and line; a factory may still raise `ValueError` for what only the data
  can tell (an input shape), which pre-flight reports before any training;
- a plugin whose import or hook fails costs only its own components: it is listed under "broken
  plugins" by `harness plugins` and everything else keeps working.
"""

from __future__ import annotations

import pluggy

from harness.records import (
    BackboneRecord,
    DatasetRecord,
    DefenceRecord,
    PoisonRecord,
    SALEstimatorRecord,
    TaskHeadRecord,
    TrackerRecord,
)

PROJECT = "harness"
ENTRY_POINT_GROUP = "harness"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def harness_register_datasets() -> list[DatasetRecord]:
    """Data sets a spec can name under `data.name`.

    The factory returns a `DataBundle` (train and test `Split`, class names, value range).
    `context.subset` is the stratified subset the spec asks for: a factory that can decode only
    those samples may draw them with `stratified_indices`; the harness takes the same subset of
    whatever comes back in any case. A missing file or folder is a `DataError` naming the path;
    nothing may be downloaded at run time.
    """


@hookspec
def harness_register_backbones() -> list[BackboneRecord]:
    """Model bodies a spec can name under `backbone.name`.

    The factory returns a `Backbone` for inputs of shape `context.input_shape`, with
    `num_features` set; it raises `ValueError` for a shape it cannot take. A family record
    (`family=True`) answers every `<name>:<variant>`, the variant in `context.variant`.
    """


@hookspec
def harness_register_task_heads() -> list[TaskHeadRecord]:
    """Task heads (loss and metric owners) a spec can name under `task.name` or `tasks`.

    The factory returns a `TaskHead`: it builds the head module on the backbone's features and
    owns the loss, the metric and the metric's direction.
    """


@hookspec
def harness_register_poisons() -> list[PoisonRecord]:
    """Unlearnable-example generators a spec can name under `poisons`.

    The factory returns a `Poison`, whose `generate(data, ctx)` keeps the contract stated in
    `harness.poison`: same shape and order, labels and data untouched, values in range,
    randomness only from `ctx.generator`. The record names the paper it follows and lists every
    deviation from it, so that entries say what was really run.
    """


@hookspec
def harness_register_defences() -> list[DefenceRecord]:
    """Defences a spec can name under `defences`.

    The factory returns a `Defence`, overriding any of its three hook points (images, batches,
    the training step; see `harness.defence`). Randomness only from the generator it is handed.
    """


@hookspec
def harness_register_trackers() -> list[TrackerRecord]:
    """Experiment trackers a spec can name under `trackers` (or `harness eval --log-to NAME`).

    The factory returns a `Tracker`, which observes a run's events (run start, arm start, epoch
    end with metrics and per-layer SAL, arm end, run end with the entries) and changes nothing.
    Import the tracking library inside the factory, so the tracker is listed even where its
    optional dependency is not installed, and fails with a message saying what to install.
    """


@hookspec
def harness_register_sal_estimators() -> list[SALEstimatorRecord]:
    """SAL estimators a spec can name under `sal.estimator` (`harness sal-agreement` compares them).

    The factory returns a `SALEstimator` (`harness.sal_estimators`), built from its own params
    and the spec's SAL section (`context.sal`: epsilon, iterations, inner_lr). `estimate` must
    read the model without changing it (bind weights with `torch.func.functional_call`, restore
    its mode) and report, per scored layer, the highest and lowest probe loss it found inside
    the ball ‖v‖ ≤ ε‖θ_l‖ and the base loss. The record's `derivation` and `biases` say what its
    values mean. Measure it against `reference` with `harness sal-agreement` before you rely on
    it: its name and params are part of the track.
    """


HOOK_FOR_KIND = {
    "dataset": "harness_register_datasets",
    "backbone": "harness_register_backbones",
    "task": "harness_register_task_heads",
    "poison": "harness_register_poisons",
    "defence": "harness_register_defences",
    "tracker": "harness_register_trackers",
    "sal_estimator": "harness_register_sal_estimators",
}

"""Executors: where a spec's arms run. The results never depend on which one.

- `local` (`harness.runner.Runner`): every arm in this process, one after another, writing the
  run folder directly (`RunFolder` is `run_arm`'s recorder).
- `ray` (`harness.executors.ray_executor.RayRunner`): each poison generation and each arm a Ray
  task; the arms' recorders forward their record to the driver, the run folder's one writer
  (`harness.executors.forwarding`).
- `harness eval --dry-run` (`harness.executors.dryrun`): the plan and a cost estimate, nothing run.

Execution settings (`Spec.execution`, overridden by `harness eval` options) are never part of
the resolved spec, its hash or the track.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.pluginmanager import Components
from harness.progress import Reporter
from harness.specfile import LoadedSpec

if TYPE_CHECKING:
    from harness.reuse import ArmSources


def make_runner(
    loaded: LoadedSpec,
    components: Components,
    *,
    output_root: Path | str | None = None,
    fresh: bool = False,
    reporter: Reporter | None = None,
    log_to: Sequence[str] = (),
    reuse: ArmSources | None = None,
    arms: Sequence[str] = (),
) -> Any:
    """The runner of the spec's executor (`loaded.spec.execution.executor`), training `arms`
    (`harness.plan.select_arms`; default: every planned arm)."""
    execution = loaded.spec.execution
    if execution.executor == "ray":
        from harness.executors.ray_executor import RayRunner

        return RayRunner(
            loaded,
            components,
            output_root=output_root,
            fresh=fresh,
            reporter=reporter,
            execution=execution,
            log_to=log_to,
            reuse=reuse,
            arms=arms,
        )
    from harness.runner import Runner

    return Runner(
        loaded,
        components,
        output_root=output_root,
        fresh=fresh,
        reporter=reporter,
        log_to=log_to,
        reuse=reuse,
        arms=arms,
    )

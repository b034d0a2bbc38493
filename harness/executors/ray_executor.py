"""A spec's poison generations and arms as Ray tasks; the driver is the run folder's one writer.

    harness eval SPEC --executor ray [--address ADDR]

ADDR is as Ray spells it (`host:port`, `ray://host:port`, `auto`); without it `RAY_ADDRESS`, and
without that a local Ray instance started for the run and stopped after it.

What runs where:

- the **driver** (the `harness eval` process) runs the pre-flight checks, opens the run folder,
  reads each arm's checkpoint, puts the spec and the data (when held in memory) into the object
  store once, submits the tasks, and writes everything the workers send through `RunFolder`,
  then scores the arms. It is the only process that writes the run folder;
- each **poison generation** (seed, poison) is one task whose result, the poisoned training set
  as the spec stores it, stays in the object store and is handed to every arm that trains on it
  (each defence); an arm's task starts when its poison exists;
- each **arm** is one streaming task: `run_arm` with a `Forwarder` as its recorder, yielding its
  record (begin, one message per epoch with the checkpoint state, finish) and its progress to
  the driver as it goes (`harness.executors.forwarding` explains why messages, not files).

Resources per task come from `--cpus-per-arm`/`--gpus-per-arm` or the spec's `execution`
section; Ray runs as many arms at once as the cluster holds. Each task sets torch to as many
threads as the CPUs it was granted, so a run with one CPU per arm computes exactly what a local
run with `OMP_NUM_THREADS=1` computes.

Faults: an arm task is never retried by Ray itself (`max_retries=0`), because a retry must
start from the arm's last checkpoint, which only the driver holds. When a worker process dies
(killed, out of memory) or its node disappears, the driver reads the arm's checkpoint back from
the run folder and submits a new attempt with it (up to `max_attempts`); the ledger refuses
anything a replaced attempt still sends. Poison generations are pure, so Ray retries them (and
rebuilds a poison lost with its node from its lineage). When the driver dies, Ray ends its tasks;
running the same command again resumes every arm from its checkpoint, as a local run does.
An error raised by the arm's own code (a plugin's bug, a bad file) is not retried: it ends the
run with that error.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from harness import termination
from harness.assembly import Assembly, build_tasks
from harness.data import DataBundle, DiskImages
from harness.entries import Entry, compute_entries, write_entries, write_entries_so_far
from harness.errors import HarnessError, RunStateError
from harness.executors.forwarding import (
    ArmLedger,
    ArmMessage,
    FixedInputs,
    Forwarder,
    decode_state,
    encode_state,
)
from harness.plan import Arm, plan_arms, select_arms
from harness.pluginmanager import Components, get_components
from harness.poisoning import PoisonedInputs
from harness.preflight import preflight
from harness.progress import LineReporter, Reporter
from harness.reuse import ArmSources
from harness.runfolder import RunFolder
from harness.runner import check_poison_storage, run_arm, stored_poison
from harness.spec import ExecutionSpec
from harness.specfile import LoadedSpec
from harness.tracking import TrackingReporter, tracked_reporter


class RayUnavailable(HarnessError):
    pass


def require_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise RayUnavailable(
            "--executor ray needs Ray: pip install 'harness[ray]' (or pip install 'ray[default]')"
        ) from None
    return ray


# --- what runs on the workers ---------------------------------------------------------------------
def _threads(cpus: float) -> int:
    return max(1, int(cpus))


def _assembly(loaded: LoadedSpec, data: DataBundle | None) -> Assembly:
    """The run's assembly on a worker: from the driver's data when it sent them, else the spec."""
    components = get_components()
    if data is None:
        return Assembly.from_spec(loaded, components)
    tasks = build_tasks(loaded.spec, components, loaded.source.where)
    return Assembly(loaded.spec, loaded.source, components, data, tasks)


def generate_poison(
    loaded: LoadedSpec, data: DataBundle | None, arm: Arm, cpus: float, show_progress: bool
) -> Tensor:
    """One (seed, poison): generated on the worker (or read from its node's poison cache), as
    the spec stores it.

    With `show_progress`, the generator's progress lines go to the worker's stderr, which Ray
    forwards to the driver's terminal under the task's name (`(poison em s0 pid=…)`): a
    generation can take longer than all the arms waiting on it, and should not be silent.
    """
    torch.set_num_threads(_threads(cpus))
    assembly = _assembly(loaded, data)
    reporter = LineReporter() if show_progress else Reporter()
    x = PoisonedInputs(assembly, reporter=reporter).for_arm(arm)
    return stored_poison(x, loaded.spec.training.poison_storage)


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


_END = object()


def train_arm(
    loaded: LoadedSpec,
    arm: Arm,
    data: DataBundle | None,
    poison: Tensor | None,
    state: bytes | None,
    attempt: int,
    cpus: float,
) -> Iterator[ArmMessage]:
    """One attempt of one arm, yielding its record and progress as messages (a streaming task).

    `run_arm` runs in a thread and its forwarder puts each message on a queue that this
    generator yields from, so messages leave the worker while the arm trains.
    """
    torch.set_num_threads(_threads(cpus))
    outbox: queue.Queue = queue.Queue()
    forwarder = Forwarder(
        arm.id, attempt, None if state is None else decode_state(state), outbox.put
    )

    def work() -> None:
        try:
            assembly = _assembly(loaded, data)
            inputs = None if poison is None else FixedInputs(poison)
            run_arm(loaded, arm, forwarder, assembly=assembly, poisons=inputs, reporter=forwarder)
        except BaseException as exc:  # handed to the generator, which raises it in the task
            outbox.put(_Failed(exc))
        else:
            outbox.put(_END)

    thread = threading.Thread(target=work, name=f"arm {arm.id}", daemon=True)
    thread.start()
    while True:
        item = outbox.get()
        if item is _END:
            break
        if isinstance(item, _Failed):
            raise item.error
        yield item
    thread.join()


# --- the driver --------------------------------------------------------------------------------------
@contextmanager
def ray_session(address: str | None, reporter: Reporter) -> Iterator[Any]:
    """Connected to ADDR, else to RAY_ADDRESS, else to a local instance started (and stopped) here.

    A session already initialised in this process (a notebook, a test) is used as it is.
    """
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    options: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True}
    # ray.init replaces the SIGTERM handler with one calling sys.exit, which would skip the
    # orderly stop (tasks cancelled, "terminated; rerun ...") the CLI's handler gives: keep ours,
    # and the CLI's SIGINT handler likewise
    on_sigterm = signal.getsignal(signal.SIGTERM)
    on_sigint = signal.getsignal(signal.SIGINT)
    try:
        if address is None:
            ray.init(address="local", include_dashboard=False, **options)
            where = "a local Ray instance started for this run"
        else:
            ray.init(address=address, **options)
            where = f"the Ray cluster at {address}"
    except (ConnectionError, RuntimeError, ValueError) as exc:
        target = address or "a new local instance"
        raise RunStateError(f"cannot start Ray on {target}: {_first_line(exc)}") from None
    finally:
        if threading.current_thread() is threading.main_thread():
            for signum, handler in ((signal.SIGTERM, on_sigterm), (signal.SIGINT, on_sigint)):
                if handler is not None:
                    signal.signal(signum, handler)
    try:
        resources = ray.cluster_resources()
        reporter.stage(
            f"running on {where}: {resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} "
            f"GPUs, {len([n for n in ray.nodes() if n.get('Alive')])} node(s)"
        )
        yield ray
    finally:
        ray.shutdown()


def in_memory(data: DataBundle) -> bool:
    """Whether the driver can hand the data to the workers (no split streams from disk)."""
    return not any(isinstance(s.inputs, DiskImages) for s in (data.train, data.test))


class RayRunner:
    """Runs every arm of a spec as Ray tasks into its run folder, then scores them.

    The same interface as `harness.runner.Runner`: `prepare()` runs the pre-flight checks (nothing
    is written), `run()` opens the folder, runs the arms on the cluster and writes the entries.
    """

    def __init__(
        self,
        loaded: LoadedSpec,
        components: Components,
        *,
        output_root: Path | str | None = None,
        fresh: bool = False,
        reporter: Reporter | None = None,
        execution: ExecutionSpec | None = None,
        log_to: Sequence[str] = (),
        reuse: ArmSources | None = None,
        arms: Sequence[str] = (),
    ) -> None:
        self.loaded = loaded
        self.spec = loaded.spec
        self.components = components
        self.reporter = reporter or Reporter()
        #: what the person running it sees (during a run `reporter` wraps it with the trackers)
        self.display = self.reporter
        self.fresh = fresh
        self.execution = execution or loaded.spec.execution
        self.folder = RunFolder.for_spec(
            self.spec.name, output_root if output_root is not None else self.spec.output
        )
        self.log_to = list(log_to)
        self.reuse = reuse or ArmSources()
        #: the arms this command trains (`--arms`; every planned arm by default)
        self.arms = select_arms(plan_arms(self.spec), arms)
        self.assembly: Assembly | None = None
        every = self.execution.save_snapshots
        self.ledger = ArmLedger(
            self.folder, self.reporter, snapshots=self.folder.snapshots(every) if every else None
        )

    @property
    def run_dir(self) -> Path:
        return self.folder.path

    def prepare(self) -> Assembly:
        require_ray()
        self.reporter.stage(f"loading data set {self.spec.data.name}")
        here = self._checked_here()
        if here is self.loaded:
            self.assembly = preflight(
                self.loaded,
                self.components,
                folder=self.folder,
                fresh=self.fresh,
                log_to=self.log_to,
            )
        else:
            self.assembly = preflight(here, self.components, log_to=self.log_to)
            self.folder.check_target(self.loaded.hash, self.fresh)
        check_poison_storage(self.assembly)
        return self.assembly

    def _checked_here(self) -> LoadedSpec:
        """The spec as the driver checks it: a CUDA device is the workers' affair when the arms
        are granted GPUs and this machine has none (the run itself keeps the spec as written)."""
        spec, training = self.spec, self.spec.training
        gpus = self.execution.gpus_per_arm > 0
        if gpus and training.device.startswith("cuda") and not torch.cuda.is_available():
            here = spec.model_copy(
                update={"training": training.model_copy(update={"device": "cpu"})}
            )
            return LoadedSpec(here, self.loaded.source)
        return self.loaded

    def run(self) -> list[Entry]:
        assembly = self.assembly or self.prepare()
        loaded = self.loaded
        display = self.display
        try:
            with ray_session(self.execution.address, display) as ray:
                self.folder.open(
                    loaded.source.as_text(),
                    loaded.resolved(),
                    loaded.hash,
                    self.spec.name,
                    stage=display.stage,
                )
                arms = self.arms
                self.reuse.adopt(self.folder, assembly, arms, display.stage)
                # worker messages reach the trackers too: the ledger reports through this one
                self.reporter = self.ledger.reporter = tracked_reporter(
                    display, loaded, self.components, self.folder, assembly, self.log_to
                )
                self.reporter.plan([arm.id for arm in arms], self.spec.training.epochs)
                todo = []
                for arm in arms:
                    state = self.folder.resume_arm(arm.id, assembly.arm_config(arm))
                    if state is not None and state.complete:
                        self.reporter.arm_done(arm.id, skipped=True)
                    else:
                        todo.append((arm, state))
                if todo:
                    _Execution(ray, self, assembly, todo).run()
            entries = compute_entries(self.folder.path)
            write_entries(self.folder.path, entries)
            if isinstance(self.reporter, TrackingReporter):
                self.reporter.run_end(entries)
        finally:
            self.reporter.close()
            self.reporter = self.ledger.reporter = display
            self.folder.unlock()
        return entries


class _Execution:
    """One driver's tasks: submitted, watched, their messages written, lost attempts resubmitted."""

    def __init__(
        self,
        ray: Any,
        runner: RayRunner,
        assembly: Assembly,
        todo: list[tuple[Arm, Any]],
    ) -> None:
        self.ray, self.runner, self.todo = ray, runner, todo
        self.execution = runner.execution
        self.reporter, self.folder, self.ledger = runner.reporter, runner.folder, runner.ledger
        self.spec_ref = ray.put(runner.loaded)
        self.data_ref = ray.put(assembly.data) if in_memory(assembly.data) else None
        execution = self.execution
        self.arm_options = {
            "num_cpus": execution.cpus_per_arm,
            "num_gpus": execution.gpus_per_arm,
            "max_retries": 0,
            "num_returns": "streaming",
        }
        self.poison_cpus = execution.cpus_per_poison or execution.cpus_per_arm
        gpus = execution.gpus_per_poison
        self.poison_options = {
            "num_cpus": self.poison_cpus,
            "num_gpus": execution.gpus_per_arm if gpus is None else gpus,
            "max_retries": execution.max_attempts - 1,
            "retry_exceptions": False,
        }
        self.arm_task = ray.remote(train_arm)
        self.poison_task = ray.remote(generate_poison)
        self.poisons: dict[tuple[int, str], Any] = {}
        self.running: dict[Any, Arm] = {}
        self.show_progress = runner.display.shows_progress

    def poison(self, arm: Arm) -> Any:
        if arm.poison is None:
            return None
        key = (arm.seed, arm.poison.key)
        if key not in self.poisons:
            self.reporter.stage(f"poison {arm.poison.key} (seed {arm.seed}): submitted")
            self.poisons[key] = self.poison_task.options(
                name=f"poison {arm.poison.key} s{arm.seed}", **self.poison_options
            ).remote(self.spec_ref, self.data_ref, arm, self.poison_cpus, self.show_progress)
        return self.poisons[key]

    def submit(self, arm: Arm, state: Any) -> None:
        attempt = self.ledger.start(arm.id, state)
        generator = self.arm_task.options(name=f"arm {arm.id}", **self.arm_options).remote(
            self.spec_ref,
            arm,
            self.data_ref,
            self.poison(arm),
            None if state is None else encode_state(state),
            attempt,
            self.execution.cpus_per_arm,
        )
        self.running[generator] = arm

    def run(self) -> None:
        ray = self.ray
        for arm, _ in self.todo:  # every poison first: generations start before the arms queue
            self.poison(arm)
        for arm, state in self.todo:
            self.submit(arm, state)
        try:
            while self.running:
                termination.check()
                ready, _ = ray.wait(list(self.running), num_returns=1, timeout=1.0)
                for generator in ready:
                    self._step(generator)
        except BaseException:
            for generator in self.running:
                with contextlib.suppress(Exception):  # ending the run matters, not each cancel
                    ray.cancel(generator, force=True)
            raise

    def _step(self, generator: Any) -> None:
        ray, arm = self.ray, self.running[generator]
        try:
            ref = next(generator)
        except StopIteration:
            del self.running[generator]
            if self.ledger.finished(arm.id):
                write_entries_so_far(self.folder.path)
            else:
                self._lost(arm, "its task ended before the arm was complete")
            return
        try:
            message = ray.get(ref)
        except ray.exceptions.RayTaskError as exc:  # the arm's own code (or its poison's) raised
            del self.running[generator]
            cause = getattr(exc, "cause", None)
            if isinstance(cause, HarnessError):
                raise cause from None
            raise RunStateError(f"{arm.id} failed on the cluster: {exc}") from None
        except ray.exceptions.RayError as exc:  # the worker or its node was lost
            del self.running[generator]
            self._lost(arm, f"{type(exc).__name__}: {_first_line(exc)}")
            return
        self.ledger.accept(message)

    def _lost(self, arm: Arm, reason: str) -> None:
        attempt = self.ledger.attempt(arm.id)
        if attempt >= self.execution.max_attempts:
            raise RunStateError(
                f"{arm.id}: attempt {attempt} of {self.execution.max_attempts} lost ({reason}); "
                "rerun the same command to resume it from its last complete epoch"
            )
        state = self.folder.resume_arm(arm.id)  # the driver's own checkpoint: the truth
        done = 0 if state is None else state.epochs_done
        self.reporter.stage(
            f"{arm.id}: attempt {attempt} lost ({reason}); attempt {attempt + 1} resumes "
            + (f"after epoch {done}" if done else "from the start")
        )
        self.submit(arm, state)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:200]

"""Exit codes and error messages as a user meets them, in a real `harness` process.

2: a problem with what was given (spec, run folder, plugin); 1: a run that failed while it ran;
130: interrupted. No command shows a Python traceback unless asked with `--debug`.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from trust_helpers import cli, no_traceback, plugin_site, spec_file

EXITS_IN_HOOK = """\
import sys
from harness.api import hookimpl

@hookimpl
def harness_register_poisons():
    sys.exit(4)
"""

EXITS_ON_IMPORT = "import sys\nsys.exit(3)\n"

BUGGY_POISON = """\
from harness.api import Poison, PoisonRecord, hookimpl

class Buggy(Poison):
    def generate(self, data, ctx):
        return data.train.x / 0 + undefined_name

@hookimpl
def harness_register_poisons():
    return [PoisonRecord(name="buggy", factory=Buggy, description="raises NameError")]
"""

EXITS_IN_GENERATE = """\
import sys
from harness.api import Poison, PoisonRecord, hookimpl

class Quitter(Poison):
    def generate(self, data, ctx):
        sys.exit("no GPU, giving up")

@hookimpl
def harness_register_poisons():
    return [PoisonRecord(name="quitter", factory=Quitter, description="exits")]
"""


def test_a_plugin_calling_sys_exit_on_import_is_listed_as_broken_and_commands_go_on(
    tmp_path: Path,
) -> None:
    site = plugin_site(tmp_path, "exits_on_import", EXITS_ON_IMPORT)
    result = cli("validate", str(spec_file(tmp_path)), cwd=tmp_path, site=site)
    assert result.returncode == 0, result.stderr
    assert "exits-on-import" in result.stderr and "SystemExit: 3" in result.stderr
    no_traceback(result)


def test_a_plugin_calling_sys_exit_in_its_hook_is_listed_as_broken_and_commands_go_on(
    tmp_path: Path,
) -> None:
    """A hook that exits is a broken plugin like one that raises: named, isolated, not fatal."""
    site = plugin_site(tmp_path, "exits_in_hook", EXITS_IN_HOOK)
    for command in ("validate", "plugins"):
        args = (command, str(spec_file(tmp_path))) if command == "validate" else (command,)
        result = cli(*args, cwd=tmp_path, site=site)
        assert result.returncode == 0, (command, result.stderr)
        assert "exits-in-hook" in result.stderr and "SystemExit: 4" in result.stderr
        assert "harness_register_poisons" in result.stderr
        no_traceback(result)
    first_party = cli("plugins", cwd=tmp_path, site=site)
    assert "random-noise" in first_party.stdout  # the other plugins still register


def test_a_poison_calling_sys_exit_while_generating_stops_the_run_naming_it(
    tmp_path: Path,
) -> None:
    site = plugin_site(tmp_path, "quitter_poison", EXITS_IN_GENERATE)
    spec = spec_file(tmp_path, poisons=[{"name": "quitter"}])
    result = cli("eval", str(spec), "--quiet", cwd=tmp_path, site=site)
    assert result.returncode == 1
    assert "sys.exit('no GPU, giving up') was called in module quitter_poison" in result.stderr
    no_traceback(result)


def test_an_unexpected_error_is_one_line_naming_where_and_debug_shows_the_traceback(
    tmp_path: Path,
) -> None:
    site = plugin_site(tmp_path, "buggy_poison", BUGGY_POISON)
    spec = spec_file(tmp_path, poisons=[{"name": "buggy"}])
    result = cli("eval", str(spec), "--quiet", cwd=tmp_path, site=site)
    assert result.returncode == 1
    (line,) = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert "NameError" in line and "module buggy_poison" in line and "--debug" in line
    no_traceback(result)
    debug = cli("--debug", "eval", str(spec), "--quiet", cwd=tmp_path, site=site)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_bad_input_exits_2(tmp_path: Path) -> None:
    spec = spec_file(tmp_path, training={"epochs": 0})
    result = cli("validate", str(spec), cwd=tmp_path)
    assert result.returncode == 2
    assert "training.epochs" in result.stderr
    no_traceback(result)


@pytest.mark.parametrize(
    ("stop", "status", "said"),
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")],
    ids=["ctrl-c", "sigterm"],
)
def test_an_interrupted_or_terminated_run_stops_cleanly_and_says_how_to_resume(
    tmp_path: Path, stop: signal.Signals, status: int, said: str
) -> None:
    # SIGTERM (a scheduler's preemption, `kill`) stops the run as Ctrl-C does, exit status 143
    # more epochs than any machine trains in the time this test waits: the run cannot end by itself
    spec = spec_file(tmp_path, training={"epochs": 10_000, "batch_size": 64})
    env = {"OMP_NUM_THREADS": "1"}
    import os

    process = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "eval", str(spec), "--quiet"],
        cwd=tmp_path,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a test run started in the background (`bash .ci/run &`) ignores SIGINT, and a child
        # inherits that: give the harness the disposition a terminal would
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    checkpoint = tmp_path / "runs" / "t" / "checkpoints" / "clean__none__s0.pt"
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert checkpoint.exists(), "the run wrote no checkpoint in 300 s"
    # one signal is enough: even when it lands in a finaliser, where Python drops the handler's
    # exception, the harness remembers it and stops at the next epoch, printing no traceback
    process.send_signal(stop)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=300)
    if process.poll() is None:
        process.kill()
    out, err = process.communicate(timeout=120)
    assert process.returncode == status, (process.returncode, err, out[-2000:])
    assert f"{said}; rerun the same command to resume" in err
    assert "Traceback" not in err


DROPPED_STOP = """\
import os, signal, sys
from harness import termination

class Finalised:
    def __del__(self):
        os.kill(os.getpid(), signal.{signal})
        sum(range(10_000))  # the handler runs here, inside the finaliser: Python drops its raise

class Broken:
    def __del__(self):
        raise ValueError("a finaliser's own bug")

before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
with termination.stop_on_signals():
    Broken()
    Finalised()
    print("went on", flush=True)
    try:
        termination.check()
    except KeyboardInterrupt as exc:
        print("stopped at the check:", type(exc).__name__, flush=True)
print("handlers restored:", signal.getsignal(signal.SIGTERM) is before[0],
      signal.getsignal(signal.SIGINT) is before[1])
print("hook restored:", sys.unraisablehook is sys.__unraisablehook__)
"""


@pytest.mark.parametrize(
    ("stop", "raised"), [("SIGINT", "KeyboardInterrupt"), ("SIGTERM", "Terminated")]
)
def test_a_stop_whose_exception_a_finaliser_dropped_still_stops_at_the_next_check(
    stop: str, raised: str
) -> None:
    # Python drops an exception raised while a finaliser runs (Ray's object references and torch's
    # weak references have many) and prints it with a traceback: the harness prints nothing, and
    # the epoch loops' check() still stops the run instead of letting it train on
    result = subprocess.run(
        [sys.executable, "-c", DROPPED_STOP.format(signal=stop)],
        capture_output=True,
        text=True,
        timeout=120,
        # a test run started in the background ignores SIGINT, and a child inherits that (the
        # harness then leaves SIGINT ignored): give it the disposition a terminal would
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert result.stdout.splitlines() == [
        "went on",
        f"stopped at the check: {raised}",
        "handlers restored: True True",
        "hook restored: True",
    ], result.stderr
    # the dropped stop is not printed; any other exception a finaliser drops still is
    assert raised not in result.stderr
    assert "ValueError: a finaliser's own bug" in result.stderr


def test_a_sigint_ignored_on_entry_stays_ignored() -> None:
    # a job started with `&` or `nohup` ignores Ctrl-C by design: the harness keeps it that way
    from harness import termination

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with termination.stop_on_signals():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL  # SIGTERM still stops
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)

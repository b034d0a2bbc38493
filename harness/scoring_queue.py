"""`harness leaderboard score`: the leaderboard scores what is submitted to it.

For every submission folder not yet scored in its current form (a digest over its files):

1. read the submission and its track; compose the full spec (refusing any field the track fixes);
2. make an environment for it: the maintainer's own when it brings no package; otherwise a fresh
   virtual environment that sees the maintainer's packages (harness, torch) through a `.pth` file
   and gets the submission's wheel, sdist or pinned requirement installed into it alone, without
   its dependencies (`pip check` then names any that are missing). The maintainer's environment
   is never written to;
3. train the track's clean arms once per track (`clean/<track>`), and let every submission's run
   adopt them (`harness eval --reuse-clean`), so β and the UD denominator are the same for all;
4. run `harness eval` on the composed spec in a subprocess, confined where the system allows:
   under bubblewrap (`bwrap`) the whole file system is read-only except the submission's work
   folder, and there is no network; in every case a wall-clock limit and an address-space limit
   apply, and the poison cache, home and temporary folders are the submission's own;
5. file the entries with the checks `harness submit` applies, and record the status (scored, or
   failed with the reason and the end of the log) in `submissions.json`; rebuild the pages.

A submission that raises, exits, loops, runs out of memory, writes outside its folder or returns
a broken poison fails alone; the others are scored.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from harness.atomic import atomic_write_text
from harness.errors import HarnessError
from harness.leaderboard import STATUS_FILE, read_statuses
from harness.tracks import (
    Submission,
    SubmissionStatus,
    clean_spec,
    composed_source,
    read_submission,
    read_track,
)

SUBMISSION_FILE = "submission.yaml"
WORK_DIR = "work"
LOG_TAIL_LINES = 40


@dataclass(frozen=True)
class Limits:
    """What one submission may take: wall-clock seconds and address space (GiB)."""

    seconds: int = 3600
    memory_gb: float = 16.0
    sandbox: bool = True


def submission_digest(folder: Path) -> str:
    """SHA-256 over every file of a submission folder (names and contents): what 'changed' means."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


class Failure(Exception):
    """One submission failed; the message is its status's reason."""

    def __init__(self, reason: str, log: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.log = log


class Scorer:
    def __init__(
        self,
        leaderboard: Path,
        tracks: Path,
        *,
        limits: Limits = Limits(),
        eval_args: Sequence[str] = (),
        log: Callable[[str], None] = print,
    ) -> None:
        self.leaderboard = Path(leaderboard)
        self.tracks = Path(tracks)
        self.limits = limits
        self.eval_args = list(eval_args)
        self.log = log
        self.work = self.leaderboard / WORK_DIR
        self.bwrap = shutil.which("bwrap") if limits.sandbox else None

    # --- one submission ---------------------------------------------------------------------
    def score(self, folder: Path, digest: str) -> SubmissionStatus:
        started = time.perf_counter()
        status = SubmissionStatus(
            id=folder.name, digest=digest, status="failed", sandboxed=self.bwrap is not None
        )
        try:
            submission, source = read_submission(folder / SUBMISSION_FILE)
            status.track = submission.track
            track = read_track(self.tracks, submission.track)
            work = self.work / folder.name
            if work.exists():
                shutil.rmtree(work)  # a changed submission starts over
            work.mkdir(parents=True)
            composed = composed_source(submission, source, track, submission.name or folder.name)
            spec_path = work / "spec.yaml"
            atomic_write_text(spec_path, composed.as_text())
            clean = self._clean_run(submission.track)
            status.clean_run = str(clean)
            python = self._environment(submission, folder, work)
            run_dir = self._evaluate(python, spec_path, work, clean)
            status.entries = self._file(run_dir)
            status.status, status.reason = "scored", None
        except Failure as exc:
            status.reason, status.log_tail = exc.reason, _tail(exc.log) or None
        except HarnessError as exc:
            status.reason = str(exc)
        status.seconds = round(time.perf_counter() - started, 1)
        status.scored_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        return status

    def _clean_run(self, track_name: str) -> Path:
        """The track's clean arms, trained once (in the maintainer's environment: no third-party code)."""
        track = read_track(self.tracks, track_name)
        out = self.work / "clean" / track_name
        spec = out / "clean.yaml"
        out.mkdir(parents=True, exist_ok=True)
        if not spec.exists():
            from ruamel.yaml import YAML

            with open(spec, "w", encoding="utf-8") as f:
                YAML(typ="safe", pure=True).dump(clean_spec(track), f)
        run_dir = out / "runs" / track_name
        entries = run_dir / "entries"
        if not (entries.is_dir() and any(entries.glob("*.json"))):
            self.log(f"track {track_name}: training its clean arms once")
            result = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "harness.cli",
                    "eval",
                    str(spec),
                    "--output",
                    str(out / "runs"),
                    "--quiet",
                    *self.eval_args,
                ],
                capture_output=True,
                text=True,
                env=self._env(out),
            )
            if result.returncode != 0:
                raise Failure(
                    f"the clean arms of track {track_name} failed (exit {result.returncode})",
                    result.stdout + result.stderr,
                )
            from harness.submit import submit

            submit(
                run_dir, self.leaderboard, replace=True
            )  # the track's clean reference, filed once
        return run_dir

    def _environment(self, submission: Submission, folder: Path, work: Path) -> str:
        """The Python that runs the submission: the maintainer's, or a fresh one with its package."""
        package = submission.package
        if package is None:
            return sys.executable
        env_dir = work / "env"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
        python = env_dir / "bin" / "python"
        purelib = Path(
            subprocess.run(
                [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
        )
        # the maintainer's packages (harness, torch, pip) are visible, read-only, behind the env's
        # own; addsitedir also runs their .pth files (an editable harness is found through one)
        maintainer = sysconfig.get_paths()["purelib"]
        (purelib / "maintainer.pth").write_text(
            f"import site; site.addsitedir({maintainer!r})\n", encoding="utf-8"
        )
        if package.requirement is not None:
            target, network = package.requirement, True
        else:
            name = package.wheel or package.sdist
            assert name is not None
            if not (folder / name).is_file():
                raise Failure(f"package: {name} is not in the submission folder")
            shutil.copyfile(folder / name, work / name)
            target, network = str(work / name), False
        install = [
            str(python),
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-build-isolation",
            "--disable-pip-version-check",
            "--no-input",
            target,
        ]
        result = self._confined(
            install, work, network=network, timeout=min(600, self.limits.seconds)
        )
        if result.returncode != 0:
            raise Failure(
                f"package: pip could not install {target} (exit {result.returncode})",
                result.stdout + result.stderr,
            )
        check = self._confined(
            [str(python), "-m", "pip", "check"], work, network=False, timeout=120
        )
        missing = [
            line
            for line in check.stdout.splitlines()
            if "requires" in line and "not installed" in line
        ]
        if missing:
            raise Failure(
                "package: dependencies missing from the leaderboard's environment: "
                + "; ".join(missing),
                check.stdout,
            )
        return str(python)

    def _evaluate(self, python: str, spec: Path, work: Path, clean: Path) -> Path:
        runs = work / "runs"
        command = [
            python,
            "-m",
            "harness.cli",
            "eval",
            str(spec),
            "--output",
            str(runs),
            "--quiet",
            "--strict",
            "--reuse-clean",
            str(clean),
            *self.eval_args,
        ]
        result = self._confined(command, work, network=False, timeout=self.limits.seconds)
        (work / "eval.log").write_text(result.stdout + result.stderr, encoding="utf-8")
        if result.returncode == -signal.SIGKILL and getattr(result, "timed_out", False):
            raise Failure(
                f"ran past the limit of {self.limits.seconds} s", result.stdout + result.stderr
            )
        if result.returncode != 0:
            raise Failure(
                f"harness eval failed (exit {result.returncode})", result.stdout + result.stderr
            )
        found = [p.parent for p in runs.glob("*/run.h5")]
        if len(found) != 1:
            raise Failure("harness eval left no single run folder", result.stdout + result.stderr)
        return found[0]

    def _file(self, run_dir: Path) -> list[str]:
        """File the run's entries, but not the clean arms it adopted: those the track's clean run
        files once, so every submission of a track is ranked against one clean reference."""
        from harness.reuse import REUSED_FILE
        from harness.submit import submit

        reused = run_dir / REUSED_FILE
        adopted = json.loads(reused.read_text(encoding="utf-8"))["arms"] if reused.exists() else []
        written, unchanged = submit(
            run_dir, self.leaderboard, replace=True, exclude_arms=frozenset(adopted)
        )
        return sorted(p.name for p in [*written, *unchanged])

    # --- confinement ------------------------------------------------------------------------
    def _env(self, work: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
        for name, sub in (
            ("HARNESS_CACHE", "cache"),
            ("HOME", "home"),
            ("TMPDIR", "tmp"),
            ("MPLCONFIGDIR", "mpl"),
        ):
            path = work / sub
            path.mkdir(parents=True, exist_ok=True)
            env[name] = str(path)
        return env

    def _confined(self, command: list[str], work: Path, *, network: bool, timeout: int):
        """Run `command` with the submission's limits, writable only `work` under bubblewrap."""
        if self.bwrap is not None:
            prefix = [
                self.bwrap,
                "--ro-bind",
                "/",
                "/",
                "--dev",
                "/dev",
                "--proc",
                "/proc",
                "--bind",
                str(work.resolve()),
                str(work.resolve()),
                "--die-with-parent",
            ]
            if not network:
                prefix.append("--unshare-net")
            command = [*prefix, "--", *command]
        memory = int(self.limits.memory_gb * (1 << 30))

        def limit() -> None:
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self._env(work),
            cwd=work,
            preexec_fn=limit,
            start_new_session=True,
        )
        try:
            out, err = process.communicate(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            out, err = process.communicate()
            timed_out = True
        except BaseException:
            # Ctrl-C or SIGTERM here: the evaluation runs in a session of its own, which no
            # terminal signal reaches; end it rather than leave it training with no one to score it
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise
        result = subprocess.CompletedProcess(command, process.returncode, out, err)
        if timed_out:
            raise Failure(f"ran past the limit of {timeout} s", out + err)
        return result


def score_submissions(
    submissions: Path,
    leaderboard: Path,
    tracks: Path,
    *,
    limits: Limits = Limits(),
    eval_args: Sequence[str] = (),
    log: Callable[[str], None] = print,
) -> list[SubmissionStatus]:
    """Score every submission not scored in its current form; record statuses; rebuild the pages."""
    from harness import leaderboard as pages

    submissions, leaderboard = Path(submissions), Path(leaderboard)
    if not submissions.is_dir():
        raise HarnessError(f"{submissions}: no such folder of submissions")
    leaderboard.mkdir(parents=True, exist_ok=True)
    statuses = {s.id: s for s in read_statuses(leaderboard)}
    scorer = Scorer(leaderboard, tracks, limits=limits, eval_args=eval_args, log=log)
    if limits.sandbox and scorer.bwrap is None:
        log(
            "warning: bubblewrap (bwrap) is not installed: submissions run with time and memory limits "
            "but without file-system and network confinement"
        )
    changed = []
    for folder in sorted(p for p in submissions.iterdir() if p.is_dir()):
        if not (folder / SUBMISSION_FILE).is_file():
            log(f"{folder}: no {SUBMISSION_FILE}; skipped")
            continue
        digest = submission_digest(folder)
        known = statuses.get(folder.name)
        if known is not None and known.digest == digest:
            log(f"{folder.name}: already {known.status} in this form; not rescored")
            continue
        log(f"{folder.name}: scoring")
        status = scorer.score(folder, digest)
        log(f"{folder.name}: {status.status}" + (f" ({status.reason})" if status.reason else ""))
        statuses[folder.name] = status
        changed.append(status)
        atomic_write_text(
            leaderboard / STATUS_FILE,
            json.dumps([s.model_dump(mode="json") for s in statuses.values()], indent=2) + "\n",
        )
    entries = (
        pages.gather([leaderboard], warn=log)
        if any((leaderboard / "entries").glob("*.json"))
        else []
    )
    pages.write(entries, leaderboard, warn=log)
    return changed

"""Exceptions the CLI turns into one clear message and a non-zero exit, never a traceback.

Exit codes (`harness.cli.main`): 2 for a problem with what the user gave (a spec, a run folder,
a plugin that cannot be built, a folder in use), 1 for a run that failed while it ran (training
diverged, a plugin broke its contract, an unexpected error), 130 for an interruption (Ctrl-C),
143 for a termination (SIGTERM).
"""

from __future__ import annotations


class Terminated(KeyboardInterrupt):  # noqa: N818 (named like KeyboardInterrupt, its base)
    """SIGTERM arrived (`kill`, a batch scheduler's preemption).

    A KeyboardInterrupt, so every path that stops cleanly on Ctrl-C (cancelling Ray tasks,
    closing pools, atomic writes) stops the same way on SIGTERM, and the run resumes from its last
    complete epoch; only the exit status (143) and the message's first word differ.
    """


class HarnessError(Exception):
    """Base for every error a user can act on."""

    #: the exit status `harness` ends with on this error
    exit_code: int = 2


class SpecError(HarnessError):
    """A spec file that cannot be run; raised before any work starts or any file is written."""


class PluginError(HarnessError):
    """A plugin or component that cannot be used."""


class DuplicateComponentError(PluginError):
    """Two components of one kind share a name: the spec would be ambiguous."""


class ComponentError(PluginError, ValueError):
    """A component that its plugin could not build from the parameters given, or built wrongly.

    Also a ValueError: what a factory refuses is a bad value, whoever catches it.
    """


class UnknownComponentError(PluginError):
    """A spec names a component no installed plugin provides."""


class DataError(HarnessError):
    """A data set that is missing, malformed or not where the spec says."""


class RunStateError(HarnessError):
    """An existing run folder that does not match the spec being run."""


class UnsafePathError(RunStateError):
    """A path the harness would write through that leaves the folder it belongs to (a symlink)."""


class RunFailure(HarnessError):
    """A run that started and could not go on: its folder is left resumable (exit 1)."""

    exit_code = 1


class DivergedError(RunFailure):
    """Training produced a non-finite loss or SAL value: the arm stops at its last good epoch."""


class PoisonContractError(RunFailure, PluginError):
    """A poison generator whose output (or whose handling of the clean data) breaks its contract."""

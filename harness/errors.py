"""Exceptions the CLI turns into one clear message and a non-zero exit, never a traceback."""

from __future__ import annotations


class HarnessError(Exception):
    """Base for every error a user can act on."""


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

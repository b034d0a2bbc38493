"""First-party poison generators, one module per method.

Each module is its own plugin, registered by its own `harness` entry point in `pyproject.toml`,
exactly as a third party's would be: a module that fails to import costs only its own methods,
and `harness plugins` names it. Modules whose names start with an underscore hold shared
helpers and register nothing.
"""

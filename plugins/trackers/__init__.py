"""First-party experiment trackers, one module per tracker, each its own plugin (entry point).

Their libraries are optional extras (`pip install -e '.[tensorboard]'`, `'.[mlflow]'`): the
trackers are always listed, and naming one whose library is missing fails before training with
what to install.
"""

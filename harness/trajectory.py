"""The parameter trajectory of an arm, for the loss-landscape views (paper §3.1, Appendix A.4)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


class ParameterTracer:
    """Counts optimisation steps and, when the arm is traced, snapshots the parameters.

    Hooks the optimiser (`register_step_post_hook`) rather than the training loop, so every
    step the optimiser really takes is counted (a step skipped by the AMP grad scaler is not).
    Snapshots are held in memory until the epoch ends and go into the run file with it.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        step: int,
        every_steps: int | None,
    ) -> None:
        self.step = step
        self.every = every_steps
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.steps: list[int] = []
        self.rows: list[np.ndarray] = []
        self._handle = optimizer.register_step_post_hook(self._on_step)

    def _on_step(self, *_: Any) -> None:
        self.step += 1
        if self.every is not None and self.step % self.every == 0:
            self.snapshot()

    def snapshot(self) -> None:
        if self.every is None:
            return
        flat = torch.nn.utils.parameters_to_vector([p.detach() for p in self.params])
        self.steps.append(self.step)
        self.rows.append(flat.float().cpu().numpy())

    def take(self) -> tuple[list[int], list[np.ndarray]]:
        """The snapshots since the last call (an epoch's), handed over to the run file."""
        steps, rows = self.steps, self.rows
        self.steps, self.rows = [], []
        return steps, rows

    def close(self) -> None:
        self._handle.remove()

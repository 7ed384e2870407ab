"""Stopping a run cleanly: SIGINT or SIGTERM ends the loop after the current step, whose checkpoint is written
first; :class:`TrainingInterrupted` then says which step and file (a second SIGINT stops at once)."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["TrainingInterrupted", "StopOnSignal", "ignore_sigint"]


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM stopped the run after ``step``, whose checkpoint ``checkpoint`` was written first."""

    def __init__(self, step: int, checkpoint: Path, output_dir: Path, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}: checkpoint {checkpoint}")
        self.step, self.checkpoint, self.output_dir, self.signum = step, checkpoint, output_dir, signum


class StopOnSignal:
    """While active (main thread only): SIGINT or SIGTERM asks the loop to stop after the current step; a
    second SIGINT stops at once (KeyboardInterrupt). Restores the previous handlers on exit."""

    def __init__(self) -> None:
        self.signum = 0
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = self.signum or signum

    def requested(self, world: int, device: torch.device) -> int:
        """The signal that asked to stop (0: none); collective under torchrun, so every rank agrees."""
        if world == 1:
            return self.signum
        flag = torch.tensor([self.signum], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag)


def ignore_sigint(_worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C to the main process (which stops after the step)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

"""Training checkpoints: ``output_dir/checkpoints/step_NNNNNNN.pt`` with the trained weights, the optimizer,
the scheduler, the step, every rank's RNG states and the sampler position, so a resumed run continues exactly.

Files are written under a temporary name and renamed (never half a file under the final name) and read with
``weights_only=True`` (nothing in a checkpoint can run code).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import random
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from .recipes import Recipe

__all__ = ["CKPT_FORMAT", "rng_state", "set_rng_state", "latest_checkpoint", "list_checkpoints", "step_of",
           "Unusable", "read_checkpoint", "save_checkpoint"]

CKPT_FORMAT = "textsam.train_state"


def rng_state() -> dict[str, Any]:
    """This process's python, numpy, torch (and CUDA) RNG states, in a ``weights_only``-loadable form."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate((state["python"][0], tuple(state["python"][1]), state["python"][2]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = list_checkpoints(Path(output_dir))
    return found[-1] if found else None


def list_checkpoints(out: Path) -> list[Path]:
    """``out/checkpoints/step_NNNNNNN.pt`` files, oldest first."""
    return sorted(p for p in out.joinpath("checkpoints").glob("step_*.pt") if p.is_file())


def step_of(path: Path) -> int:
    try:
        return int(path.stem.removeprefix("step_"))
    except ValueError:
        return -1


class Unusable(Exception):
    """Why a checkpoint file cannot be used; the text completes "PATH ...". Never torch's own wording (it
    suggests turning ``weights_only`` off)."""


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A training checkpoint's state, loaded with ``weights_only=True`` (nothing in the file can run code).

    Raises ``Unusable`` for a file that is empty, truncated, not a checkpoint, or one that names code.
    """
    if path.stat().st_size == 0:
        raise Unusable("is empty (0 bytes): it was not written completely")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        if found:
            raise Unusable(f"refers to {found[1]}, which could run code when loaded: it was not loaded, and a "
                            "checkpoint that textsam wrote never holds such references") from None
        raise Unusable("is not a checkpoint (unreadable bytes)") from None
    except Exception as err:  # noqa: BLE001 - truncated zip, bad bytes, ...: every failure means unreadable
        text = str(err).splitlines()[0].split(". ")[0][:120] if str(err) else ""
        why = f"{type(err).__name__}: {text}" if text and "weights_only" not in text else type(err).__name__
        raise Unusable(f"is truncated or corrupt ({why})") from None
    if not isinstance(state, dict) or state.get("format") != CKPT_FORMAT:
        raise Unusable("is not a textsam training checkpoint")
    try:
        int(state["step"]), int(state["sampler"]["batch_size"]), int(state["sampler"]["seed"])
        missing = [k for k in ("model", "optimizer", "scheduler", "rng") if not state.get(k)]
    except (KeyError, TypeError, ValueError):
        missing = ["step/sampler"]
    if missing:
        raise Unusable(f"is incomplete (no {', '.join(missing)})")
    return state


def save_checkpoint(recipe: Recipe, optimizer: torch.optim.Optimizer, scheduler: Any, step: int,
                    out: Path, world: int, rank: int) -> Path:
    """Collective: gather every rank's RNG state; rank 0 writes ``checkpoints/step_NNNNNNN.pt``."""
    rngs: list[Any] = [rng_state()]
    if world > 1:  # gather as bytes: all_gather_object cannot unpickle tensors in torch 2.14
        buf = io.BytesIO()
        torch.save(rngs[0], buf)
        blobs: list[Any] = [None] * world
        dist.all_gather_object(blobs, buf.getvalue())
        rngs = [torch.load(io.BytesIO(b), weights_only=True) for b in blobs]
    cfg = recipe.config
    path = out / "checkpoints" / f"step_{step:07d}.pt"
    if rank == 0:
        state = {
            "format": CKPT_FORMAT, "version": 1, "step": step, "world_size": world,
            "model": {k: v.detach().cpu() for k, v in recipe.trainable_state().items()},
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rngs,
            "sampler": {"position": step * cfg.batch_size, "batch_size": cfg.batch_size, "seed": cfg.seed},
            "config": json.dumps(cfg.to_dict()),
        }
        head = recipe.module.semantic_head
        if head is not None:
            state["semantic_head"] = {k: v.detach().cpu() for k, v in head.state_dict().items()}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")  # written in full, then renamed: never half a file under the final name
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
        old = sorted(path.parent.glob("step_*.pt"))
        for stale in old[: max(0, len(old) - max(1, cfg.keep_checkpoints))]:
            stale.unlink()
    return path

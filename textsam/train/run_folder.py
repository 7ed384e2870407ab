"""The output folder of a run: what it holds, whether a new run may start there, and where an old one resumes.

An output folder holds one run: ``model.safetensors``, ``text_head.safetensors``, ``train_config.json``,
``log.jsonl`` and ``checkpoints/``. Training into a folder that holds another run is refused (``resume``
continues it, ``overwrite`` deletes its files first); resuming a finished run changes nothing.
``resume="auto"`` skips (with a warning, setting them aside as ``.pt.corrupt``) latest checkpoints that cannot
be read. Files are written to a temporary name and renamed, so a killed run leaves no half-written file under a
final name; the temporary files it leaves are deleted by the next run.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ..errors import InputError
from .checkpoints import Unusable, list_checkpoints, read_checkpoint, step_of
from .config import TrainConfig
from .weights import exported_step

__all__ = ["RUN_FILES", "run_files", "has_run", "holds_run", "starting_point", "finished", "prepare_folder",
           "atomic_write", "trim_log"]

logger = logging.getLogger(__name__)
RUN_FILES = ("model.safetensors", "text_head.safetensors", "train_config.json", "log.jsonl")  # + checkpoints/


def run_files(out: Path) -> list[Path]:
    """The files of a run in ``out`` (weights, config, log, step checkpoints)."""
    return [out / n for n in RUN_FILES if (out / n).is_file()] + list_checkpoints(out)


def has_run(out: Path) -> bool:
    """``out`` holds a run that got somewhere: weights, a checkpoint or a log line (a config alone is a start
    that failed before its first step, which a new run may replace)."""
    return any(p.name != "train_config.json" and (p.name != "log.jsonl" or p.stat().st_size)
               for p in run_files(out))


def holds_run(out: Path) -> str:
    ckpts = list_checkpoints(out)
    latest = f" (its latest checkpoint is step {step_of(ckpts[-1])})" if ckpts else ""
    return (f"{out} already holds a training run{latest}: continue it with --resume auto, train into a new --out "
            "folder, or add --overwrite to delete its files first")


def starting_point(config: TrainConfig, out: Path, resume: str | Path | None, overwrite: bool,
                    stop_at: int | None) -> tuple[Path | None, dict[str, Any] | None, list[Path]]:
    """The checkpoint to start from and its state ((None, None): step 0), and the unreadable checkpoints that
    ``resume="auto"`` skipped. Reads only: raises InputError before anything is written."""
    ckpt: Path | None = None
    state: dict[str, Any] | None = None
    skipped: list[Path] = []
    if resume == "auto":
        if overwrite:
            raise InputError("--overwrite deletes the run that --resume auto would continue: give only one of them")
        for path in reversed(list_checkpoints(out)):
            try:
                ckpt, state = path, read_checkpoint(path)
                break
            except Unusable as err:
                logger.warning("skipping the checkpoint %s: it %s; trying the one before it", path, err)
                skipped.append(path)
        else:
            if skipped:
                raise InputError(f"no usable checkpoint in {out / 'checkpoints'} (all {len(skipped)} are unreadable): "
                                 "start the run again with --overwrite, or give --resume a good checkpoint file")
            ckpt = None
    elif resume:
        ckpt = Path(resume)
        if not ckpt.is_file():
            raise InputError(f"--resume: no checkpoint at {ckpt}: give a checkpoint file, or 'auto' for the latest "
                             "one in the output folder")
        try:
            state = read_checkpoint(ckpt)
        except Unusable as err:
            raise InputError(f"--resume: {ckpt} {err}; give another checkpoint (an earlier one of the same run), "
                             "or --resume auto for the latest usable one") from None
        inside = ckpt.resolve().parent == (out / "checkpoints").resolve()
        later = [p for p in list_checkpoints(out) if step_of(p) > int(state["step"])] if inside else []
        if inside and overwrite:
            raise InputError(f"--overwrite would delete {ckpt}, the checkpoint --resume names: give only one of them")
        if later:
            raise InputError(f"{out} has checkpoints after step {state['step']} (up to {later[-1].name}): resuming "
                             f"from {ckpt.name} there would mix two histories; use --resume auto, or resume into a "
                             "new --out folder")
        if not inside and has_run(out) and not overwrite:
            raise InputError(holds_run(out))
    elif has_run(out) and not overwrite:
        raise InputError(holds_run(out))
    if state is not None:
        step, sampler = int(state["step"]), state["sampler"]
        if (sampler["batch_size"], sampler["seed"]) != (config.batch_size, config.seed):
            raise InputError(f"{ckpt} was written with batch_size = {sampler['batch_size']} and seed = "
                             f"{sampler['seed']}; resuming needs the same (the config has {config.batch_size}, "
                             f"{config.seed})")
        if step > config.steps:
            raise InputError(f"{ckpt} is at step {step}, past steps = {config.steps}: set steps (or --steps) to "
                             f"{step} or more")
        if stop_at is not None and stop_at <= step:
            raise InputError(f"the run is already at step {step}: --stop-at must be after it (up to steps = "
                             f"{config.steps})")
    return ckpt, state, skipped


def finished(out: Path, state: dict[str, Any], config: TrainConfig) -> bool:
    """The checkpoint is the last step and ``model.safetensors`` (written last) holds that step's weights."""
    return int(state["step"]) == config.steps and exported_step(out / "model.safetensors") == config.steps


def prepare_folder(out: Path, overwrite: bool, skipped: list[Path]) -> None:
    """Rank 0, before writing: delete the old run's files (``overwrite``), temporary files that a killed run
    left, and set aside unreadable checkpoints that ``resume="auto"`` skipped (``.pt.corrupt``)."""
    doomed = [p for p in (*[out / f"{n}.tmp" for n in RUN_FILES], out / "model.tmp") if p.is_file()]
    doomed += [p for n in RUN_FILES for p in out.glob(f".{n}.*.tmp")]  # textsam.weights.format.write's
    doomed += out.joinpath("checkpoints").glob("step_*.tmp")
    if overwrite:
        doomed += run_files(out) + list(out.joinpath("checkpoints").glob("*.corrupt"))
        if doomed:
            logger.warning("--overwrite: deleting the %d files of the earlier run in %s", len(doomed), out)
    for path in doomed:
        path.unlink(missing_ok=True)
    for path in skipped:
        path.replace(path.with_name(path.name + ".corrupt"))


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def trim_log(path: Path, last_step: int) -> None:
    """Keep the log lines of steps up to ``last_step`` (and drop a line that a killed run cut short)."""
    if not path.is_file():
        return
    old = path.read_text(encoding="utf-8", errors="replace")
    keep = []
    for line in old.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("step", 0) <= last_step:
            keep.append(line + "\n")
    if "".join(keep) != old:
        atomic_write(path, "".join(keep))

"""The benchmark loop: progress bar, per-image records, resume, torchrun sharding, merge and report.

Files in ``OUT``:

- ``run.json``: what was run (benchmark, data, protocol, templates, model). A rerun into the same folder
  with different settings is refused, so results of two configurations never mix.
- ``results.jsonl`` (one process) or ``results.rank{r}.jsonl`` (rank ``r`` of a torchrun job): one line
  per image, appended with flush + fsync. A rerun skips every image that already has a successful
  record in any of these files (resume); failed images (missing or unreadable: ``ItemError``) are
  recorded as such, listed in the report and retried by a rerun; when every image failed, the command
  ends with an error (after writing the report). Any other error stops the run. A last line without its
  newline (cut by a kill) is dropped and that image redone.
- After all ranks pass a (gloo) barrier, rank 0 merges every file into ``results.jsonl`` sorted in the
  benchmark's canonical image order, removes the rank files, scores and writes ``report.json`` and
  ``report.md``.

Sharding: rank ``r`` of ``world`` takes ``keys[r::world]`` of the (``--limit``-cut) key list.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError
from .base import Benchmark, ItemError, JsonlWriter, describe_keys, read_jsonl
from .report import atomic_write_text, build_report, write_report

logger = logging.getLogger(__name__)

__all__ = ["Runner", "DistContext", "score_predictions"]


@dataclass
class DistContext:
    """Rank and world size from torchrun's environment; initialises a gloo group when world > 1."""

    rank: int = 0
    world: int = 1
    owns_group: bool = False

    @classmethod
    def from_env(cls) -> DistContext:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        if world <= 1:
            return cls()
        import torch.distributed as dist

        owns = False
        if not dist.is_initialized():
            dist.init_process_group("gloo")
            owns = True
        return cls(dist.get_rank(), dist.get_world_size(), owns) if owns else cls(rank, world, False)

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()
            self.owns_group = False


_OUTPUT_NAMES = ("results.jsonl", "report.json", "report.md")


def _result_files(out: Path) -> list[Path]:
    files = [out / "results.jsonl"] + sorted(out.glob("results.rank*.jsonl"))
    return [f for f in files if f.is_file()]


def _load_records(out: Path) -> dict[str, dict[str, Any]]:
    """Records of every result file; a successful record beats a failed one, later beats earlier."""
    records: dict[str, dict[str, Any]] = {}
    for f in _result_files(out):
        for rec in read_jsonl(f):
            key = str(rec["key"])
            old = records.get(key)
            if old is None or old.get("error") or not rec.get("error"):
                records[key] = rec
    return records


class Runner:
    """Run ``benchmark`` over its images with a predictor, resumably and (under torchrun) sharded.

    Args:
        benchmark: a :class:`~textsam.eval.base.Benchmark`.
        out_dir: the output folder (created).
        predictor_factory: builds the predictor; called only when there is work left on this rank.
        model_info: ``{"name", "checkpoint", "clip", "text_head"}`` for the report and ``run.json``.
        limit: evaluate only the first ``limit`` images of the benchmark's order.
        progress: show a tqdm bar (images/s).
    """

    def __init__(
        self,
        benchmark: Benchmark,
        out_dir: str | Path,
        predictor_factory: Callable[[], Any],
        *,
        model_info: dict[str, Any],
        limit: int | None = None,
        progress: bool = True,
    ) -> None:
        if limit is not None and limit < 1:
            raise InputError(f"--limit must be a positive number of images, got {limit}")
        self.benchmark = benchmark
        self.out = Path(out_dir)
        self.factory = predictor_factory
        self.model_info = dict(model_info)
        self.limit = limit
        self.progress = progress

    def description(self) -> dict[str, Any]:
        desc = {"benchmark": self.benchmark.name, "model": self.model_info}
        desc.update(self.benchmark.describe())
        return desc

    def keys(self) -> list[str]:
        keys = list(self.benchmark.keys())
        if not keys:
            raise InputError(f"the {self.benchmark.name} data has no images to evaluate")
        return keys[: self.limit] if self.limit is not None else keys

    def _prepare_out(self) -> None:
        """Create the output folder, refusing a file, or a folder holding result files of something else."""
        if self.out.exists() and not self.out.is_dir():
            raise InputError(f"--out {self.out} is a file, not a folder: give a new folder for the results")
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise InputError(f"cannot create the --out folder {self.out}: {err.strerror or err}. "
                             "Choose a folder you can write to.") from None
        if not (self.out / "run.json").exists():
            ours = [n for n in _OUTPUT_NAMES if (self.out / n).exists()] + [p.name for p in self.out.glob("results.rank*.jsonl")]
            if ours:
                raise InputError(f"{self.out} holds {', '.join(ours)} but no run.json, so it is not the folder of a "
                                 "textsam eval run that can be resumed: use a new --out folder (nothing was changed)")

    def _check_run_file(self, ctx: DistContext) -> None:
        path = self.out / "run.json"
        desc = json.loads(json.dumps(self.description(), sort_keys=True))
        # a run that stopped before its first image (a bad checkpoint, ...) holds nothing to keep: its
        # run.json is replaced, so the corrected command is not refused as "a different run"
        if ctx.rank == 0 and (not path.exists() or not _load_records(self.out)):
            atomic_write_text(path, json.dumps(desc, indent=2, sort_keys=True) + "\n")
        ctx.barrier()
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise InputError(f"{path} is unreadable ({err}), so {self.out} cannot be resumed: use a new --out folder "
                             "or delete the old one") from None
        if not isinstance(old, dict):
            old = {"run.json": old}
        if old != desc:
            diff = sorted(k for k in set(old) | set(desc) if old.get(k) != desc.get(k))
            raise InputError(
                f"{self.out} holds results of a different run (differs in: {', '.join(diff)}); "
                "use a new --out folder or delete the old one"
            )

    def run(self) -> dict[str, Any] | None:
        """Predict every unfinished image of this rank, then (rank 0) merge, score and report.

        Returns the report dict on rank 0 (or a single process), None on other ranks.
        """
        start = time.perf_counter()
        self._prepare_out()
        ctx = DistContext.from_env()
        try:
            self._check_run_file(ctx)
            keys = self.keys()
            mine = keys[ctx.rank :: ctx.world]
            done = {k for k, r in _load_records(self.out).items() if not r.get("error")}
            todo = [k for k in mine if k not in done]
            resumed = sum(1 for k in keys if k in done)
            if todo:
                self._predict(todo, ctx)
            ctx.barrier()
            if ctx.rank != 0:
                return None
            records = self._merge(keys)
            scores = self.benchmark.score(records, keys)
            timing = self._timing(records, keys, time.perf_counter() - start, ctx.world, resumed)
            report = build_report(self.description(), scores, limit=self.limit, timing=timing)
            write_report(self.out, report)
            failed = [k for k in keys if k in records and records[k].get("error")]
            if len(failed) == len(keys):  # a report of nothing but misses is no result: say what is wrong
                raise InputError(
                    f"none of the {len(keys)} image(s) could be read (e.g. image {failed[0]}: "
                    f"{records[failed[0]]['error']}); check --data and its image folder, then run the same "
                    f"command again (the list is in {self.out / 'report.md'})"
                )
            return report
        finally:
            ctx.close()

    def _predict(self, todo: Sequence[str], ctx: DistContext) -> None:
        from tqdm import tqdm

        predictor = self.factory()
        name = "results.jsonl" if ctx.world == 1 else f"results.rank{ctx.rank}.jsonl"
        bar = tqdm(
            todo, desc=f"{self.benchmark.name}" + (f" [rank {ctx.rank}]" if ctx.world > 1 else ""),
            unit="img", disable=not self.progress, file=sys.stderr, position=ctx.rank, dynamic_ncols=True,
        )
        with JsonlWriter(self.out / name) as writer:
            for key in bar:
                t0 = time.perf_counter()
                try:
                    payload = self.benchmark.run_item(predictor, key)
                except ItemError as err:
                    logger.warning("%s: %s", key, err)
                    payload = {"error": str(err)}
                writer.write({"key": key, **payload, "seconds": round(time.perf_counter() - t0, 4)})
        bar.close()

    def _merge(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Every record, deduplicated, rewritten to results.jsonl in canonical order; rank files removed."""
        records = _load_records(self.out)
        order = {k: i for i, k in enumerate(self.benchmark.keys())}
        ordered = sorted(records, key=lambda k: (order.get(k, len(order)), k))
        atomic_write_text(self.out / "results.jsonl", "".join(json.dumps(records[k], sort_keys=True) + "\n"
                                                             for k in ordered))
        for p in self.out.glob("results.rank*.jsonl"):
            p.unlink()
        return records

    @staticmethod
    def _timing(records: dict, keys: Sequence[str], wall: float, world: int, resumed: int) -> dict[str, Any]:
        secs = [float(records[k].get("seconds", 0.0)) for k in keys if k in records and not records[k].get("error")]
        return {
            "seconds_per_image": (sum(secs) / len(secs)) if secs else None,
            "images_timed": len(secs),
            "wall_seconds_this_run": round(wall, 3),
            "processes": world,
            "images_resumed_from_earlier_runs": resumed,
        }


def score_predictions(
    benchmark: Benchmark,
    predictions: str | Path,
    out_dir: str | Path,
    *,
    limit: int | None = None,
) -> dict[str, Any]:
    """Score an existing predictions file without a model and write the report into ``out_dir``."""
    start = time.perf_counter()
    path = Path(predictions)
    if path.is_dir():
        raise InputError(f"--predictions {path} is a folder: give the results JSONL file (e.g. {path / 'results.jsonl'})")
    if not path.is_file():
        raise InputError(f"predictions file not found: {path}")
    records = benchmark.load_predictions(path)
    runner = Runner(benchmark, out_dir, lambda: None, model_info={"name": f"predictions file {path}"}, limit=limit)
    keys = runner.keys()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file, not a folder: give a folder for the report")
    if (out / "run.json").exists():
        raise InputError(f"{out} is the folder of a model run (it has run.json): score the predictions into a new "
                         "--out folder (nothing was changed)")
    for name in ("report.json", "report.md"):
        if (out / name).exists() and not _is_scoring_report(out / "report.json", runner.description()):
            raise InputError(f"{out} already holds a report of another run: use a new --out folder "
                             "(nothing was changed)")
    scores = benchmark.score(records, keys)
    unknown = sorted(set(records) - set(benchmark.keys()))
    if unknown:
        scores.problems.append(f"{len(unknown)} predicted image(s) not in the data, ignored: {describe_keys(unknown)}")
    timing = {"wall_seconds_this_run": round(time.perf_counter() - start, 3), "processes": 1}
    report = build_report(runner.description(), scores, limit=limit, timing=timing)
    write_report(out, report)
    return report


def _is_scoring_report(path: Path, description: dict[str, Any]) -> bool:
    """Whether ``path`` is a report of scoring the same predictions file on the same data (safe to replace)."""
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    desc = json.loads(json.dumps(description, sort_keys=True))
    return isinstance(old, dict) and all(old.get(k) == v for k, v in desc.items())

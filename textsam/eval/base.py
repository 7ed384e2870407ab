"""What every benchmark provides, the per-image record files, and problem listing.

A benchmark is a list of work items (images), identified by string keys in a fixed order. Running one
item gives a JSON-able record; scoring turns the records of all items into metrics. Records are what
``results.jsonl`` holds (one line per image: ``{"key": ..., <payload>, "seconds": ...}``) and what
``--predictions`` reads back, so a predictions file can always be re-scored without a model.
"""

from __future__ import annotations

import errno
import json
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import rle as _rle
from ..errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["Benchmark", "Scores", "ItemError", "load_item", "read_jsonl", "JsonlWriter", "describe_keys",
           "split_records", "decode_rle"]


class ItemError(InputError):
    """One work item cannot be evaluated (its image is missing or unreadable): it is recorded as failed,
    listed in the report and scored as a miss, and the run goes on. Any other error stops the run."""


def load_item(load: Any, *args: Any) -> Any:
    """``load(*args)``, with a missing or unreadable file turned into an :class:`ItemError`."""
    try:
        return load(*args)
    except (InputError, OSError) as err:
        raise ItemError(str(err)) from err


@dataclass
class Scores:
    """Result of scoring: ``metrics`` (fractions), ``counts`` (images, expressions, ...), ``problems``
    (human-readable lines, sorted) and optional ``details`` (per-class tables)."""

    metrics: dict[str, Any]
    counts: dict[str, int]
    problems: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


class Benchmark(ABC):
    """Base class. Subclasses set ``name`` and implement the abstract methods below."""

    name = "benchmark"

    @abstractmethod
    def keys(self) -> list[str]:
        """Work items (image keys) in canonical order; ``--limit N`` takes the first N."""
        ...

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """``{"data": {...}, "protocol": str, "templates": ...}``: deterministic, for the report."""
        ...

    @abstractmethod
    def run_item(self, predictor: Any, key: str) -> dict[str, Any]:
        """Predict one image; the JSON-able payload of its record. Raise :class:`ItemError` to record a failure."""
        ...

    @abstractmethod
    def score(self, records: dict[str, dict[str, Any]], keys: Sequence[str]) -> Scores:
        """Metrics over ``keys``: a key without a (successful) record scores as a miss and is listed."""
        ...

    def load_predictions(self, path: Path) -> dict[str, dict[str, Any]]:
        """Records from a predictions file (default: a results JSONL)."""
        records = {str(r["key"]): r for r in read_jsonl(path, strict=True)}
        if not records:
            raise InputError(f"the predictions file {path} is empty: it holds no predictions to score")
        return records


def read_jsonl(path: Path, *, strict: bool = False) -> list[dict[str, Any]]:
    """Records of a JSONL file.

    Without ``strict`` (a run's own results file) a last line without its newline is dropped: a killed
    run may have cut it anywhere, even right before the newline, so :class:`JsonlWriter` cuts it off and
    the image is predicted again; other unreadable lines are skipped with a warning. ``strict`` (a user's
    predictions file) reads a last line without a newline and raises :class:`InputError` for any bad line.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a folder, not a JSONL file")
    if not path.is_file():
        raise InputError(f"file not found: {path}")
    out: list[dict[str, Any]] = []
    try:
        data = path.read_bytes()
    except OSError as err:
        raise InputError(f"cannot read {path}: {err.strerror or err}") from None
    if not strict and data and not data.endswith(b"\n"):
        logger.warning("%s: dropping its last line, cut off by an interrupted run (that image is redone)", path)
        data = data[: data.rfind(b"\n") + 1]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        if strict:
            raise InputError(f"{path} is not a UTF-8 text file of JSON lines ({err.reason} at byte {err.start})") from None
        text = data.decode("utf-8", errors="replace")
    lines = text.splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            if strict:
                raise InputError(f"{path}, line {n}: not valid JSON ({err})") from err
            logger.warning("%s, line %d: skipping an unreadable (truncated?) line", path, n)
            continue
        if not isinstance(rec, dict) or "key" not in rec:
            if strict:
                raise InputError(f"{path}, line {n}: each line must be a JSON object with a 'key' (the image id)")
            continue
        out.append(rec)
    return out


class JsonlWriter:
    """Append-only JSONL writer: every line is flushed and fsynced, so a killed run loses at most one line.

    A file left with a partial last line by a killed run is cut back to its last complete line first.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            if self.path.is_file() and self.path.stat().st_size:
                data = self.path.read_bytes()
                if not data.endswith(b"\n"):
                    with open(self.path, "r+b") as f:
                        f.truncate(data.rfind(b"\n") + 1)
            self._f = open(self.path, "ab", buffering=0)  # noqa: SIM115 - unbuffered: a failed write leaves nothing to flush
        except OSError as err:
            raise InputError(f"cannot write {self.path}: {err.strerror or err}. Use an --out folder you can "
                             "write to.") from None

    def write(self, record: dict[str, Any]) -> None:
        line = memoryview((json.dumps(record, sort_keys=True) + "\n").encode("utf-8"))
        try:
            while line:
                written = self._f.write(line)
                if not written:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                line = line[written:]
            os.fsync(self._f.fileno())
        except OSError as err:
            raise InputError(f"cannot write {self.path}: {err.strerror or err}. Free some space (or fix the "
                             "folder) and run the same command again: finished images are kept.") from None

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def describe_keys(keys: Iterable[str], limit: int = 10) -> str:
    """``"a, b, c"`` or ``"a, b, ... (+12 more)"``."""
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... (+{len(keys) - limit} more)" if len(keys) > limit else "")


def split_records(
    records: dict[str, dict[str, Any]], keys: Sequence[str], what: str = "image"
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The successful records of ``keys`` and the problem lines for failed or absent ones."""
    ok: dict[str, dict[str, Any]] = {}
    failed: dict[str, str] = {}
    absent: list[str] = []
    for k in keys:
        rec = records.get(k)
        if rec is None:
            absent.append(k)
        elif rec.get("error"):
            failed[k] = str(rec["error"])
        else:
            ok[k] = rec
    problems = []
    if failed:
        items = [f"{k} ({failed[k]})" for k in failed]
        problems.append(
            f"{len(failed)} {what}(s) missing or unreadable, scored as misses: {describe_keys(items, 5)}"
        )
    if absent:
        problems.append(f"{len(absent)} {what}(s) without a prediction, scored as misses: {describe_keys(absent)}")
    return ok, problems


def decode_rle(segm: Any, shape: tuple[int, int], where: str) -> np.ndarray:
    """Decode a predicted RLE, checking its size against the ground truth's ``(H, W)``."""
    try:
        mask = _rle.decode(segm)
    except (InputError, TypeError, KeyError) as err:
        raise InputError(f"{where}: bad segmentation RLE ({err})") from err
    if mask.shape != tuple(shape):
        raise InputError(f"{where}: predicted mask is {list(mask.shape)} but the image is {list(shape)}")
    return mask

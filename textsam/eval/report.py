"""``report.json`` and ``report.md``: everything but the ``timing`` section is deterministic.

Two runs over the same data with the same model and options (1 or N processes, uninterrupted or
resumed) give byte-identical reports outside the ``timing`` block / ``## Timing`` section.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from ..errors import InputError
from .base import Scores

__all__ = ["build_report", "write_report", "render_markdown", "strip_timing", "atomic_write_text"]

TIMING_HEADER = "## Timing"


def build_report(description: dict[str, Any], scores: Scores, *, limit: int | None, timing: dict[str, Any]) -> dict:
    """The report dict: description (benchmark, model, data, protocol, templates) + scores + timing."""
    report = dict(description)
    report.update(
        limit=limit,
        counts=scores.counts,
        metrics=scores.metrics,
        details=scores.details,
        problems=sorted(scores.problems),
        timing=timing,
    )
    return report


def strip_timing(report: dict[str, Any]) -> dict[str, Any]:
    """The report without its timing block (what must match between runs)."""
    return {k: v for k, v in report.items() if k != "timing"}


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder (flushed to disk, then
    renamed), so ``path`` is never half written; the file gets the usual permissions (umask).
    An OSError becomes an :class:`InputError` naming the file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        raise InputError(f"cannot write {path}: {err.strerror or err}. Use an --out folder you can write to "
                         "(with free space).") from None
    finally:
        tmp.unlink(missing_ok=True)


def write_report(out_dir: Path, report: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.md`` into ``out_dir``; return both paths."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"cannot create the --out folder {out_dir}: {err.strerror or err}. Choose a folder you "
                         "can write to.") from None
    js, md = out_dir / "report.json", out_dir / "report.md"
    atomic_write_text(js, json.dumps(report, indent=2, sort_keys=True, allow_nan=False) + "\n")
    atomic_write_text(md, render_markdown(report))
    return js, md


def _fmt(value: Any, percent: bool = True) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if percent:
            return "n/a" if value < 0 else f"{100 * value:.2f}"
        return f"{value:.4g}"
    return str(value)


def _flatten(prefix: str, value: Any, rows: list[tuple[str, Any]]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix} / {k}" if prefix else str(k), v, rows)
    else:
        rows.append((prefix, value))


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(report: dict[str, Any]) -> str:
    """The Markdown report: a summary table, metrics (percent), per-class tables, problems, timing."""
    model = report.get("model", {})
    data = report.get("data", {})
    tpl = report.get("templates") or {}
    summary: list[tuple[str, Any]] = [
        ("benchmark", report.get("benchmark")),
        ("model", model.get("name")),
        ("checkpoint", model.get("checkpoint") or "(published / none)"),
        ("CLIP", model.get("clip") or "(model default)"),
        ("text head", model.get("text_head") or "(none)"),
        ("data", ", ".join(f"{k}={v}" for k, v in data.items())),
        ("protocol", report.get("protocol")),
        ("prompt templates", f"{tpl.get('name')} ({len(tpl.get('templates') or [])} templates)" if tpl else "(none)"),
        ("limit", report.get("limit") if report.get("limit") is not None else "(all)"),
    ]
    summary += [(f"number of {k}", v) for k, v in report.get("counts", {}).items()]
    lines = [f"# textsam eval: {report.get('benchmark')}", "", "| field | value |", "|---|---|"]
    lines += [f"| {_cell(k)} | {_cell(v)} |" for k, v in summary]
    rows: list[tuple[str, Any]] = []
    _flatten("", report.get("metrics", {}), rows)
    lines += ["", "## Metrics (%)", "", "| metric | value |", "|---|---|"]
    lines += [f"| {_cell(k)} | {_fmt(v)} |" for k, v in rows]
    for title, table in (report.get("details") or {}).items():
        if not isinstance(table, dict) or not table:
            continue
        columns = list(next(iter(table.values())).keys()) if isinstance(next(iter(table.values())), dict) else ["value"]
        lines += ["", f"## {title} (%)", "", "| | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
        for name, row in table.items():
            vals = [row.get(c) for c in columns] if isinstance(row, dict) else [row]
            lines.append(f"| {_cell(name)} | " + " | ".join(_fmt(v) for v in vals) + " |")
    problems = report.get("problems") or []
    lines += ["", "## Problems", ""]
    lines += [f"- {_cell(p)}" for p in problems] if problems else ["- none"]
    timing = report.get("timing") or {}
    lines += ["", TIMING_HEADER, "", "| field | value |", "|---|---|"]
    lines += [f"| {_cell(k)} | {_fmt(v, percent=False)} |" for k, v in timing.items()]
    return "\n".join(lines) + "\n"

"""Reading and writing training config files (TOML or JSON), with one-line messages for every mistake.

A mistake names the file and what to change: bad TOML/JSON (the line), an unknown key (the closest known
one), a key in the wrong table (the right one), a key of the earlier flat layout (``lr moved to [optim]
lr``), a wrong type or value (the key, what it must be, an example).
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import fields
from pathlib import Path
from typing import Any

from ..errors import InputError
from .config import TABLES, TrainConfig
from .config_types import toml_text

__all__ = ["config_from_dict", "load_config", "save_config", "MOVED"]

# the flat keys of the earlier layout that now live in a table: old name -> (table, name there)
MOVED: dict[str, tuple[str, str]] = {
    **{k: ("optim", k) for k in ("lr", "weight_decay", "warmup_steps", "cosine", "min_lr_ratio", "grad_clip",
                                 "text_encoder_lr_scale")},
    **{k: ("loss", k) for k in ("focal_weight", "dice_weight", "iou_weight", "correction_clicks", "text_multimask",
                                "semantic_weight", "semantic_fields", "locator_weight")},
    **{k: ("text_head", k) for k in ("num_text_tokens", "projector_hidden_dim", "locator_dim", "locator_appearance",
                                     "locator_factors", "word_tokens", "max_regions", "locate_text", "blind_text",
                                     "locator_presence")},
    **{k: ("augment", k) for k in ("greyscale_prob", "greyscale_text", "region_colour_shuffle", "crop_variants",
                                   "crop_enlarge", "crop_grey_prob")},
    "cache_dir": ("cache", "dir"),
}
# keys of the earlier layout that are gone, and what to do instead
REMOVED = {
    "locator_kind": "locator_kind was removed: the region locator is the only kind; delete the line "
                    "(and set [text_head] locator_dim for a locator)",
}


def _table_of(key: str) -> str | None:
    """The table that has a field ``key`` (None: none does)."""
    return next((name for name, cls in TABLES.items() if key in {f.name for f in fields(cls)}), None)


def _unknown_key(cls: type, key: str, section: str | None) -> str:
    """The message for an unknown ``key`` of ``cls`` (the table ``section``; None: the top level)."""
    if key in REMOVED:
        return REMOVED[key]
    where = f" in [{section}]" if section else ""
    if key in MOVED:
        table, name = MOVED[key]
        return f"{key} moved to [{table}] {name}"
    owner = _table_of(key)
    if owner is not None and owner != section:
        return f"{key!r} belongs in the [{owner}] table{where}: move it under [{owner}]"
    if section is not None and key in {f.name for f in fields(TrainConfig)}:
        return f"{key!r} is a top-level key, not one of [{section}]: move it above the first [table]"
    known = sorted(f.name for f in fields(cls))
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}?" if close else f"the known keys are {', '.join(known)}"
    return f"unknown key {key!r}{where}; {hint}"


def _build(cls: type, values: Any, section: str | None = None) -> Any:
    if not isinstance(values, dict):
        if section == "text_head" and isinstance(values, str):
            raise InputError("text_head = FILE (start weights for the text head) was removed: [text_head] is the "
                             "text head's table; give the file as checkpoint (any textsam file loads its text head)")
        raise InputError(f"[{section}] must be a table (key = value lines under [{section}]), "
                         f"got {toml_text(values)}")
    unknown = sorted(set(values) - {f.name for f in fields(cls)})
    if unknown:
        first = next((k for k in unknown if k in REMOVED or k in MOVED), unknown[0])
        raise InputError(_unknown_key(cls, first, section))
    kwargs = dict(values)
    if cls is TrainConfig:
        for name, sub in TABLES.items():
            if name in kwargs:
                kwargs[name] = _build(sub, kwargs[name], name)
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise InputError(f"bad value{f' in [{section}]' if section else ''}: {err}") from err


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """A :class:`TrainConfig` from a plain dict (the parsed file, or ``TrainConfig.to_dict()``)."""
    if not isinstance(values, dict):
        raise InputError(f"a training config is a table of key = value pairs, got {toml_text(values)}")
    return _build(TrainConfig, values)


def _at_line(text: str, line: int) -> str:
    lines = text.splitlines()
    return f" `{lines[line - 1].strip()}`" if 1 <= line <= len(lines) and lines[line - 1].strip() else ""


def _parse(p: Path, text: str) -> Any:
    if p.suffix.lower() != ".toml":
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            raise InputError(f"{p} is not valid JSON: {err.msg} (line {err.lineno}, column {err.colno}); "
                             f"fix line {err.lineno}{_at_line(text, err.lineno)}") from err
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError as err:
            raise InputError("reading TOML on Python 3.10 needs `pip install tomli`; or use JSON") from err
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        found = re.search(r"at line (\d+)", str(err))
        line = int(found[1]) if found else 0
        fix = f"; fix line {line}{_at_line(text, line)}" if line else ""
        raise InputError(f"{p} is not valid TOML: {str(err).splitlines()[0]}{fix}") from err


def load_config(path: str | Path) -> TrainConfig:
    """Read a ``.json`` or ``.toml`` training config (InputError naming the file and what to fix)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"training config not found: {p}. Check the path (a .toml or .json file).")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise InputError(f"{p} is not UTF-8 text: a training config is a .toml or .json file") from err
    except OSError as err:
        raise InputError(f"cannot read the training config {p}: {err.strerror or err}") from err
    values = _parse(p, text)
    try:
        return config_from_dict(values)
    except InputError as err:
        raise InputError(f"{p}: {err}") from err


def save_config(config: TrainConfig, path: str | Path) -> Path:
    """Write ``config`` as JSON (readable by :func:`load_config`)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(config.to_dict(), indent=2) + "\n", encoding="utf-8")
    return p

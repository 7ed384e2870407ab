"""Shards: ``--shard i/n`` labels every n-th image (by position in the sorted image list, i from 0) into its
own store; :func:`merge_stores` gathers the shards' stores into one, from which the dataset is written.

Each shard's ``run.json`` records the request, the digest of the whole sorted image list and the shard, so a
merge can tell that the shards belong together and that none is missing or unfinished.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from textsam.errors import InputError

from .inputs import ImageRef
from .store import Store

__all__ = ["parse_shard", "shard_images", "inputs_digest", "merge_stores", "copy_records"]


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        i, n = -1, 0
    if n < 1 or not 0 <= i < n:
        raise InputError(f"--shard takes I/N with 0 <= I < N (e.g. --shard 0/4 ... --shard 3/4), got {text!r}")
    return i, n


def shard_images(refs: Sequence[ImageRef], shard: tuple[int, int] | None) -> list[ImageRef]:
    """The images of shard ``(i, n)``: positions i, i+n, i+2n, ... of the sorted list (all without a shard)."""
    if shard is None:
        return list(refs)
    i, n = shard
    return list(refs[i::n])


def inputs_digest(refs: Sequence[ImageRef]) -> str:
    """sha256 of the sorted image names: shards of one labelling share it."""
    return hashlib.sha256("\n".join(r.file for r in refs).encode()).hexdigest()


def merge_stores(folders: Sequence[Path]) -> tuple[dict[str, Any], list[tuple[Store, str]]]:
    """Check that the stores in ``folders`` are the shards of one labelling, every one finished; return the
    merged run document and where each record is (``(store, key)``), for :func:`copy_records`.

    Raises:
        InputError: a folder without a store, shards of different requests or image sets, a missing shard,
            an unfinished shard.
    """
    if not folders:
        raise InputError("give the shards' output folders to merge: textsam label merge OUT0 OUT1 ... -o OUT")
    runs = []
    for folder in folders:
        store = Store(Path(folder))
        run = store.read_run()
        if run is None:
            raise InputError(f"{folder} is not an output folder of textsam label (no {store.root.name}/run.json): "
                             "give the folders the shards wrote")
        runs.append((store, run))
    first = runs[0][1]
    for store, run in runs[1:]:
        if run.get("request_hash") != first.get("request_hash"):
            raise InputError(f"{store.out} and {runs[0][0].out} were labelled with different classes, model or "
                             "options: merge only shards of one command")
        if run.get("inputs") != first.get("inputs"):
            raise InputError(f"{store.out} and {runs[0][0].out} labelled different image sets: merge only shards of "
                             "one command")
    shards = [run.get("shard") for _, run in runs]
    if None not in shards:
        n = shards[0][1]
        if any(s[1] != n for s in shards):
            raise InputError(f"the shards do not agree on N ({sorted(set(s[1] for s in shards))}): merge the shards "
                             "of one command")
        missing = sorted(set(range(n)) - {s[0] for s in shards})
        if missing:
            raise InputError(f"shard(s) {', '.join(f'{i}/{n}' for i in missing)} missing: run them and give their "
                             "folders to merge too")
    entries: dict[str, dict[str, Any]] = {}
    sources: list[tuple[Store, str]] = []
    for store, run in runs:
        for entry in run["images"]:
            if entry["file"] in entries:
                continue
            if entry["key"] is not None:
                if not store.has(entry["key"]):
                    shard = run.get("shard")
                    which = "the labelling" if shard is None else "shard {}/{}".format(*shard)
                    raise InputError(f"{entry['file']} is not labelled yet in {store.out}: run {which} again to "
                                     "finish it, then merge")
                sources.append((store, entry["key"]))
            entries[entry["file"]] = entry
    if len(entries) != first.get("count"):
        raise InputError(f"the shards hold {len(entries)} of {first.get('count')} images: give every shard's folder")
    merged = {**{k: first[k] for k in ("request", "request_hash", "inputs", "count", "image_root")}, "shard": None,
              "images": [entries[f] for f in sorted(entries)]}
    return merged, sources


def copy_records(sources: Sequence[tuple[Store, str]], out: Store) -> None:
    """Copy each ``(store, key)`` record into ``out`` (records already there are left as they are)."""
    for store, key in sources:
        if not out.copy_from(store, key):
            raise InputError(f"the record {key} vanished from {store.out} during the merge: merge again")

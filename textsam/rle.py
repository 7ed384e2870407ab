"""COCO run-length encoding (RLE) of binary masks, without pycocotools.

The format is pycocotools' own: the mask is read in column-major (Fortran) order, ``counts`` holds
the lengths of alternating runs starting with a run of zeros (so a mask whose first pixel is set
starts with a ``0``), and the *compressed* form writes each count (minus the count two places back,
from the fourth count on) as little-endian groups of 5 bits, 6 bits per character offset by 48, bit
``0x20`` meaning "more groups follow" and bit ``0x10`` of the last group being the sign.

``encode`` produces exactly the string ``pycocotools.mask.encode`` gives (as ``str``), so results
written by textsam read back with pycocotools and with any COCO tooling.

An RLE here is a dict ``{"size": [H, W], "counts": str | bytes | list[int]}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .errors import InputError

__all__ = ["encode", "decode", "area", "to_bbox", "iou", "counts_of", "string_to_counts", "counts_to_string"]

RLE = dict[str, Any]


# ------------------------------------------------------------------------------------ run lengths
def _runs(mask: np.ndarray) -> np.ndarray:
    """Run lengths (int64) of an ``(H, W)`` mask in column-major order, starting with zeros."""
    flat = np.asarray(mask).astype(bool, copy=False).ravel(order="F")
    n = flat.size
    if n == 0:
        return np.zeros(1, dtype=np.int64)
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], change, [n])).astype(np.int64)
    counts = np.diff(bounds)
    if flat[0]:
        counts = np.concatenate(([0], counts))
    return counts


def counts_to_string(counts: np.ndarray | list[int]) -> str:
    """pycocotools' ``rleToString``: compress run lengths into the COCO counts string."""
    cnts = np.asarray(counts, dtype=np.int64).ravel()
    if cnts.size == 0:
        return ""
    x = cnts.copy()
    if cnts.size > 3:
        x[3:] -= cnts[1:-2]  # delta to the count two back, for i > 2 (as pycocotools does)
    groups: list[np.ndarray] = []
    valid: list[np.ndarray] = []
    active = np.ones(x.size, dtype=bool)
    while active.any():
        c = x & 0x1F
        x = x >> 5  # arithmetic shift, like C's on a signed long
        more = np.where((c & 0x10) != 0, x != -1, x != 0) & active
        groups.append((c | np.where(more, 0x20, 0)) + 48)
        valid.append(active)
        active = more
    chars = np.stack(groups, axis=1)  # (n, k): each row one count, in writing order
    keep = np.stack(valid, axis=1)
    return chars[keep].astype(np.uint8).tobytes().decode("ascii")


def string_to_counts(s: str | bytes) -> np.ndarray:
    """pycocotools' ``rleFrString``: run lengths (int64) from a compressed counts string."""
    raw = s.encode("ascii") if isinstance(s, str) else bytes(s)
    b = np.frombuffer(raw, dtype=np.uint8).astype(np.int64)
    if b.size == 0:
        return np.zeros(0, dtype=np.int64)
    c = b - 48
    if (c < 0).any() or (c > 63).any():
        raise InputError("RLE counts string has characters outside '0'..'o': it is not a COCO RLE.")
    more = (c & 0x20) != 0
    if more[-1]:
        raise InputError("RLE counts string is truncated (its last character says more follow).")
    ends = np.flatnonzero(~more)  # index of the last character of each count
    starts = np.concatenate(([0], ends[:-1] + 1))
    group = np.repeat(np.arange(ends.size), ends - starts + 1)
    k = np.arange(b.size) - starts[group]  # position of each character within its count
    if k.max() > 12:
        raise InputError("RLE counts string holds a value too large for 64 bits: it is corrupt.")
    x = np.zeros(ends.size, dtype=np.int64)
    np.add.at(x, group, (c & 0x1F) << (5 * k))
    last = c[ends]
    neg = (last & 0x10) != 0
    x[neg] |= np.left_shift(np.int64(-1), 5 * (k[ends][neg] + 1))
    # undo the delta: cnts[i] = x[i] + cnts[i - 2] for i > 2
    cnts = x.copy()
    if x.size > 1:
        cnts[1::2] = np.cumsum(x[1::2])
    if x.size > 2:
        cnts[2::2] = np.cumsum(x[2::2])
    return cnts


# ------------------------------------------------------------------------------------ public API
def _size(rle: Mapping[str, Any]) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in rle["size"])
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(f"an RLE needs 'size': [H, W] ({err!r}).") from err
    if h < 0 or w < 0:
        raise InputError(f"RLE size must be non-negative, got {[h, w]}.")
    return h, w


def counts_of(rle: Mapping[str, Any]) -> np.ndarray:
    """The run lengths of an RLE whose ``counts`` is a compressed str/bytes or a list of ints."""
    if not isinstance(rle, Mapping) or "counts" not in rle:
        raise InputError("an RLE is a dict with 'size': [H, W] and 'counts'.")
    counts = rle["counts"]
    if isinstance(counts, (str, bytes, bytearray)):
        cnts = string_to_counts(counts)
    else:
        cnts = np.asarray(counts, dtype=np.int64).ravel()
    if (cnts < 0).any():
        raise InputError("RLE counts must be non-negative run lengths.")
    h, w = _size(rle)
    total = int(cnts.sum())
    if total != h * w:
        raise InputError(f"RLE counts add up to {total} pixels but size {[h, w]} has {h * w}.")
    return cnts


def encode(mask: np.ndarray) -> RLE:
    """Compressed COCO RLE of an ``(H, W)`` mask (bool, or any dtype: non-zero = set).

    Returns ``{"size": [H, W], "counts": str}``, identical to
    ``pycocotools.mask.encode(np.asfortranarray(mask.astype(np.uint8)))`` with counts decoded.
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise InputError(f"encode takes one (H, W) mask, got shape {m.shape}.")
    return {"size": [int(m.shape[0]), int(m.shape[1])], "counts": counts_to_string(_runs(m != 0))}


def decode(rle: Mapping[str, Any]) -> np.ndarray:
    """``(H, W)`` bool mask of an RLE (compressed str or bytes, or uncompressed ``list[int]`` counts)."""
    h, w = _size(rle)
    cnts = counts_of(rle)
    values = np.zeros(cnts.size, dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, cnts)
    return flat.reshape(w, h).T.copy()


def area(rle: Mapping[str, Any]) -> int:
    """Number of set pixels."""
    return int(counts_of(rle)[1::2].sum())


def to_bbox(rle: Mapping[str, Any]) -> list[float]:
    """COCO box ``[x, y, w, h]`` (pixel edges: a single pixel at (x, y) gives ``[x, y, 1, 1]``).

    ``[0, 0, 0, 0]`` for an empty mask; equals ``pycocotools.mask.toBbox``.
    """
    h, _ = _size(rle)
    cnts = counts_of(rle)
    ends = np.cumsum(cnts)
    n_fg = cnts.size // 2
    if n_fg == 0 or h == 0:
        return [0.0, 0.0, 0.0, 0.0]
    length = cnts[1 : 2 * n_fg : 2]
    first = ends[0 : 2 * n_fg : 2][length > 0]  # first pixel of each run of ones
    last = ends[1 : 2 * n_fg : 2][length > 0] - 1  # its last pixel
    if first.size == 0:
        return [0.0, 0.0, 0.0, 0.0]
    x0, y0 = first // h, first % h
    x1, y1 = last // h, last % h
    xs, xe = int(x0.min()), int(x1.max())
    if (x1 > x0).any():  # a run that wraps into the next column covers the top and bottom rows
        ys, ye = 0, h - 1
    else:
        ys, ye = int(min(y0.min(), y1.min())), int(max(y0.max(), y1.max()))
    return [float(xs), float(ys), float(xe - xs + 1), float(ye - ys + 1)]


def iou(a: Mapping[str, Any], b: Mapping[str, Any]) -> float:
    """Intersection over union of two RLEs of the same size (0.0 when both are empty)."""
    if _size(a) != _size(b):
        raise InputError(f"iou needs masks of one size, got {list(_size(a))} and {list(_size(b))}.")
    ma, mb = decode(a), decode(b)
    union = int(np.count_nonzero(ma | mb))
    if union == 0:
        return 0.0
    return float(np.count_nonzero(ma & mb)) / union

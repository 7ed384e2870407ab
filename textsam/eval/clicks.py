"""Simulated clicks for SAM's point protocol: the exact Euclidean distance transform and click placement.

The first click is the "centre" of the object: the pixel farthest from the mask boundary (maximum of
the interior distance transform). Each later click is placed at the pixel farthest from the boundary of
the error region (false negatives -> positive click, false positives -> negative click), choosing the
error (FN or FP) whose farthest pixel is farther, as RITM's ``get_next_points`` does. The image border
counts as boundary (the mask is padded with background before the transform). Ties are broken by the
first pixel in row-major order, so clicks are deterministic.

``scipy.ndimage.distance_transform_edt`` is used when scipy is installed; otherwise an exact numpy
implementation of Felzenszwalb & Huttenlocher's lower-envelope algorithm (vectorised across rows).
"""

from __future__ import annotations

import numpy as np

__all__ = ["distance_transform", "first_click", "next_click"]


def _column_distance(mask: np.ndarray) -> np.ndarray:
    """Squared distance along each column to the nearest background pixel (inf if the column has none)."""
    h, w = mask.shape
    rows = np.arange(h)[:, None].astype(np.float64)
    bg = ~mask
    # last background row at or above each pixel, first background row at or below it
    above = np.where(bg, rows, -np.inf)
    above = np.maximum.accumulate(above, axis=0)
    below = np.where(bg, rows, np.inf)
    below = np.minimum.accumulate(below[::-1], axis=0)[::-1]
    d = np.minimum(rows - above, below - rows)
    return d * d


def _lower_envelope(f: np.ndarray) -> np.ndarray:
    """``out[r, p] = min_q f[r, q] + (p - q)^2`` for every row (Felzenszwalb-Huttenlocher, exact)."""
    n_rows, n = f.shape
    out = np.empty_like(f)
    finite = np.isfinite(f).any(axis=1)
    out[~finite] = np.inf
    f = f[finite]
    n_rows = f.shape[0]
    if n_rows == 0:
        return out
    # columns whose f is inf never win; replace by a huge finite value to keep the arithmetic finite
    big = float(n) ** 2 * 4 + f[np.isfinite(f)].max(initial=0.0) + 1.0
    f = np.where(np.isfinite(f), f, big)
    rows = np.arange(n_rows)
    v = np.zeros((n_rows, n), dtype=np.int64)
    z = np.full((n_rows, n + 1), np.inf)
    z[:, 0] = -np.inf
    k = np.zeros(n_rows, dtype=np.int64)
    for q in range(1, n):
        fq = f[:, q] + q * q
        s = np.empty(n_rows)
        active = np.ones(n_rows, dtype=bool)
        while True:
            idx = rows[active]
            vk = v[idx, k[idx]]
            s_act = (fq[idx] - (f[idx, vk] + vk * vk)) / (2.0 * (q - vk))
            s[idx] = s_act
            pop = s_act <= z[idx, k[idx]]
            if not pop.any():
                break
            k[idx[pop]] -= 1
            active[:] = False
            active[idx[pop]] = True
        k += 1
        v[rows, k] = q
        z[rows, k] = s
        z[rows, k + 1] = np.inf
    k[:] = 0
    res = np.empty((n_rows, n))
    for p in range(n):
        while True:
            adv = z[rows, k + 1] < p
            if not adv.any():
                break
            k[adv] += 1
        vk = v[rows, k]
        res[:, p] = (p - vk) ** 2 + f[rows, vk]
    out[finite] = res
    return out


def _edt_numpy(mask: np.ndarray) -> np.ndarray:
    if mask.size == 0:
        return np.zeros(mask.shape)
    g = _column_distance(mask)
    return np.sqrt(_lower_envelope(g))


def distance_transform(mask: np.ndarray, *, use_scipy: bool | None = None) -> np.ndarray:
    """Euclidean distance of each foreground pixel to the nearest background pixel (0 on background).

    ``mask``: ``(H, W)`` bool. The border is NOT treated as background here (pad first for that).
    ``use_scipy``: force (True) or avoid (False) scipy; default: scipy when importable.
    """
    m = np.asarray(mask, dtype=bool)
    if use_scipy is not False:
        try:
            from scipy.ndimage import distance_transform_edt
        except ImportError:
            if use_scipy:
                raise
        else:
            return distance_transform_edt(m).astype(np.float64)
    if not (~m).any():
        return np.full(m.shape, np.inf)
    return _edt_numpy(m)


def _farthest_from_boundary(mask: np.ndarray) -> tuple[int, int, float]:
    """(x, y, distance) of the pixel farthest from the boundary of ``mask`` (image border = boundary).

    Only the bounding box of the mask (plus a one-pixel margin) is transformed, for speed.
    """
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return -1, -1, 0.0
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    crop = np.pad(mask[y0:y1, x0:x1], 1)
    dist = distance_transform(crop)[1:-1, 1:-1]
    flat = int(np.argmax(dist))
    yy, xx = divmod(flat, dist.shape[1])
    return int(x0 + xx), int(y0 + yy), float(dist[yy, xx])


def first_click(gt: np.ndarray) -> tuple[int, int, int]:
    """``(x, y, 1)``: the maximum of the mask's interior distance transform (raises on an empty mask)."""
    x, y, d = _farthest_from_boundary(np.asarray(gt, dtype=bool))
    if d <= 0:
        raise ValueError("first_click needs a non-empty mask")
    return x, y, 1


def next_click(gt: np.ndarray, pred: np.ndarray) -> tuple[int, int, int] | None:
    """The next corrective click ``(x, y, label)`` for prediction ``pred``, or None when it is perfect.

    label 1 (positive) when the farthest-from-boundary error pixel is a false negative, 0 when it is a
    false positive; a tie goes to the false negative.
    """
    gt = np.asarray(gt, dtype=bool)
    pred = np.asarray(pred, dtype=bool)
    fx, fy, fd = _farthest_from_boundary(gt & ~pred)
    px, py, pd = _farthest_from_boundary(pred & ~gt)
    if fd <= 0 and pd <= 0:
        return None
    if fd >= pd:
        return fx, fy, 1
    return px, py, 0

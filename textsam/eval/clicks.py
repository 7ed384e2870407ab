"""Simulated clicks for SAM's point protocol: the exact Euclidean distance transform and click placement.

The first click is the "centre" of the object: the pixel farthest from the mask boundary (maximum of
the interior distance transform). Each later click is placed at the pixel farthest from the boundary of
the error region (false negatives -> positive click, false positives -> negative click), choosing the
error (FN or FP) whose farthest pixel is farther, as RITM's ``get_next_points`` does. The image border
counts as boundary (the mask is padded with background before the transform). Ties are broken by the
first pixel in row-major order, so clicks are deterministic.

``scipy.ndimage.distance_transform_edt`` is used when scipy is installed; otherwise exact numpy code:
:func:`distance_transform` (Felzenszwalb & Huttenlocher's lower envelope, vectorised across rows) for
a full transform, and a bounded search that finds the maximum without a full transform for clicks.
Both give the same click as scipy (same maximum, same tie-break).
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
    """``out[r, p] = min_q f[r, q] + (p - q)^2`` for every row (Felzenszwalb-Huttenlocher, exact).

    The scan over ``q`` is a Python loop; every step is vectorised across rows (flat indexing).
    """
    n_rows, n = f.shape
    out = np.full((n_rows, n), np.inf)
    finite = np.isfinite(f).any(axis=1)
    f = f[finite]
    n_rows = f.shape[0]
    if n_rows == 0:
        return out
    # a column whose f is inf never wins; a huge finite value keeps the arithmetic finite
    big = 4.0 * n * n + f[np.isfinite(f)].max(initial=0.0) + 1.0
    f = np.where(np.isfinite(f), f, big)
    fp = (f + (np.arange(n, dtype=np.float64) ** 2)[None, :]).ravel()  # f[q] + q^2, flat
    base = np.arange(n_rows) * n  # row offsets into flat (n_rows, n) arrays
    basez = np.arange(n_rows) * (n + 1)  # ... into flat (n_rows, n + 1) arrays
    v = np.zeros(n_rows * n, dtype=np.int64)  # parabola vertices, v[base + j]
    z = np.full(n_rows * (n + 1), np.inf)  # boundaries between parabolas, z[basez + j]
    z[basez] = -np.inf
    k = np.zeros(n_rows, dtype=np.int64)  # index of the last parabola of each row
    for q in range(1, n):
        fq = fp[base + q]
        vk = v[base + k]
        s = (fq - fp[base + vk]) / (2.0 * (q - vk))
        pop = np.flatnonzero(s <= z[basez + k])
        while pop.size:
            k[pop] -= 1
            vk = v[base[pop] + k[pop]]
            s_pop = (fq[pop] - fp[base[pop] + vk]) / (2.0 * (q - vk))
            s[pop] = s_pop
            pop = pop[s_pop <= z[basez[pop] + k[pop]]]
        k += 1
        v[base + k] = q
        z[basez + k] = s
        z[basez + k + 1] = np.inf
    # parabola j of a row covers p in [z[j], z[j + 1]): find it for every p with one searchsorted over
    # the rows' boundaries laid end to end (each row shifted by a span larger than its range)
    span = 8.0 * n + 16.0
    bounds = z.reshape(n_rows, n + 1)[:, 1:]
    valid = np.arange(n)[None, :] < k[:, None]
    bounds = np.where(valid, np.clip(bounds, -2.0 * n - 2, 2.0 * n + 2), 2.0 * n + 2)
    shift = (np.arange(n_rows) * span)[:, None]
    p = np.arange(n, dtype=np.float64)[None, :]
    j = np.searchsorted((bounds + shift).ravel(), (p + shift).ravel(), side="left").reshape(n_rows, n)
    j -= (np.arange(n_rows) * n)[:, None]
    rows = np.arange(n_rows)[:, None]
    vv = v.reshape(n_rows, n)[rows, j]
    out[finite] = (p - vv) ** 2 + f[rows, vv]
    return out


def _edt_numpy(mask: np.ndarray) -> np.ndarray:
    if mask.size == 0:
        return np.zeros(mask.shape)
    if mask.shape[1] > mask.shape[0]:  # the scan loops over the second axis: make it the shorter one
        return _edt_numpy(mask.T).T
    return np.sqrt(_lower_envelope(_column_distance(mask)))


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


def _run_distance(mask: np.ndarray) -> np.ndarray:
    """Distance (int) along each column to the nearest background pixel; needs a background border."""
    h = mask.shape[0]
    rows = np.arange(h)[:, None]
    above = np.maximum.accumulate(np.where(mask, -1, rows), axis=0)
    below = np.minimum.accumulate(np.where(mask, h, rows)[::-1], axis=0)[::-1]
    return np.minimum(rows - above, below - rows).astype(np.int64)


def _argmax_distance(mask: np.ndarray, chunk: int = 2048) -> tuple[int, int]:
    """``(flat index, squared distance)`` of the first (row-major) pixel of maximum Euclidean distance to
    the background of ``mask``, which must have a background border. Exact, without a full transform.

    ``d^2(y, x) = min_x' g(y, x')^2 + (x - x')^2`` with ``g`` the column distance; ``U = min(g, h)`` (``h``
    the row distance) bounds ``d`` from above and limits the search to ``|x - x'| <= U``. The pixels with
    the largest ``U`` give a lower bound ``L`` of the maximum; then only pixels with ``U^2 >= L`` can reach
    or tie it, and exactly those are evaluated.
    """
    g = _run_distance(mask)
    u = np.minimum(g, _run_distance(mask.T).T)
    w = mask.shape[1]
    g2 = (g * g).ravel()

    def exact(idx: np.ndarray) -> np.ndarray:
        out = np.empty(idx.size, dtype=np.int64)
        for start in range(0, idx.size, chunk):
            part = idx[start : start + chunk]
            k = int(u.flat[part].max())
            offs = np.arange(-k, k + 1)
            ys, xs = np.divmod(part, w)
            cols = xs[:, None] + offs[None, :]
            inside = (cols >= 0) & (cols < w)
            vals = g2[ys[:, None] * w + np.clip(cols, 0, w - 1)] + offs[None, :] ** 2
            out[start : start + chunk] = np.where(inside, vals, np.iinfo(np.int64).max).min(axis=1)
        return out

    top = np.flatnonzero(u.ravel() == u.max())
    lower = int(exact(top).max())
    cand = np.flatnonzero((u * u).ravel() >= lower)  # sorted, so ties resolve to the first pixel
    d2 = exact(cand)
    best = int(np.argmax(d2))
    return int(cand[best]), int(d2[best])


def _farthest_from_boundary(mask: np.ndarray) -> tuple[int, int, float]:
    """(x, y, distance) of the pixel farthest from the boundary of ``mask`` (image border = boundary);
    ties go to the first pixel in row-major order. Only the mask's bounding box (plus a one-pixel
    background margin) is searched."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return -1, -1, 0.0
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    crop = np.pad(mask[y0:y1, x0:x1], 1)
    try:
        from scipy.ndimage import distance_transform_edt
    except ImportError:
        flat, d2 = _argmax_distance(crop)
        dist = float(np.sqrt(d2))
    else:
        full = distance_transform_edt(crop)
        flat = int(np.argmax(full))
        dist = float(full.flat[flat])
    yy, xx = divmod(flat, crop.shape[1])
    return int(x0 + xx - 1), int(y0 + yy - 1), dist


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

"""Similarity maps on the CLIP patch grid -> SAM prompts in original image pixels.

Pure numpy; no model (also the square mask crops used for CLIP crop scoring). Frames as in :mod:`textsam.text.grounding`: *original* ``(H, W)`` pixels,
*input* (longest side resized to ``input_size``, padded bottom/right), *grid* cells ``(col, row)``.
Points are ``(x, y)`` and boxes ``x0, y0, x1, y1`` in original pixels, the frame SAM's predictor takes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from textsam.errors import InputError
from textsam.ops import mask_box
from textsam.transforms import get_preprocess_shape

_NEIGHBOURS = [(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if (dr, dc) != (0, 0)]


@dataclass(frozen=True)
class Geometry:
    """How an original ``(height, width)`` image sits in the square CLIP input and its patch grid.

    The image is resized to ``(resized_h, resized_w)`` (longest side ``input_size``, SAM's rounding) and
    padded bottom/right; cell ``(col, row)`` spans input pixels ``[col*p, (col+1)*p)`` x
    ``[row*p, (row+1)*p)``; ``(grid_h, grid_w)`` cells cover the real image (the last ones may be
    partly padding). Input -> original is ``x / scale_x``, ``y / scale_y``.
    """

    height: int
    width: int
    input_size: int
    patch_size: int
    resized_h: int
    resized_w: int

    @classmethod
    def create(cls, height: int, width: int, input_size: int, patch_size: int) -> Geometry:
        resized_h, resized_w = get_preprocess_shape(height, width, input_size)
        return cls(int(height), int(width), int(input_size), int(patch_size), resized_h, resized_w)

    @property
    def scale_x(self) -> float:
        return self.resized_w / self.width

    @property
    def scale_y(self) -> float:
        return self.resized_h / self.height

    @property
    def grid_h(self) -> int:
        return math.ceil(self.resized_h / self.patch_size)

    @property
    def grid_w(self) -> int:
        return math.ceil(self.resized_w / self.patch_size)

    @property
    def grid_shape(self) -> tuple[int, int]:
        return self.grid_h, self.grid_w

    def input_to_image(self, xy: np.ndarray) -> np.ndarray:
        """``(N, 2)`` (x, y) input-frame pixels -> original pixels, float64."""
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        return np.stack([xy[:, 0] / self.scale_x, xy[:, 1] / self.scale_y], axis=1)

    def image_to_input(self, xy: np.ndarray) -> np.ndarray:
        """``(N, 2)`` (x, y) original pixels -> input-frame pixels, float64."""
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        return np.stack([xy[:, 0] * self.scale_x, xy[:, 1] * self.scale_y], axis=1)

    def grid_to_image(self, xy_grid: np.ndarray) -> np.ndarray:
        """``(N, 2)`` integer cells ``(col, row)`` -> ``(N, 2)`` float64 (x, y) original pixels.

        Each cell maps to the centre of its part inside the real image (the full cell centre
        ``((col + 0.5) p, (row + 0.5) p)`` in the input frame, except for partly padded last cells).
        """
        cells = np.rint(np.asarray(xy_grid, dtype=np.float64)).astype(np.int64).reshape(-1, 2)
        outside = (cells < 0).any(axis=1) | (cells[:, 0] >= self.grid_w) | (cells[:, 1] >= self.grid_h)
        if outside.any():
            raise InputError(
                f"grid cells must lie in [0, {self.grid_w}) x [0, {self.grid_h}), got {cells.tolist()}"
            )
        p = self.patch_size
        x_in = (cells[:, 0] * p + np.minimum((cells[:, 0] + 1) * p, self.resized_w)) / 2.0
        y_in = (cells[:, 1] * p + np.minimum((cells[:, 1] + 1) * p, self.resized_h)) / 2.0
        return self.input_to_image(np.stack([x_in, y_in], axis=1))

    def image_to_grid(self, xy: np.ndarray) -> np.ndarray:
        """``(N, 2)`` (x, y) original pixels -> ``(N, 2)`` int64 cells ``(col, row)``, clipped to the grid."""
        xy_in = self.image_to_input(xy)
        cols = np.clip(np.floor(xy_in[:, 0] / self.patch_size), 0, self.grid_w - 1)
        rows = np.clip(np.floor(xy_in[:, 1] / self.patch_size), 0, self.grid_h - 1)
        return np.stack([cols, rows], axis=1).astype(np.int64)

    def cells_to_box(self, col0: int, row0: int, col1: int, row1: int) -> np.ndarray:
        """Inclusive cell range -> ``(4,)`` float32 box ``x0, y0, x1, y1`` in original pixels (real part)."""
        p = self.patch_size
        corners = np.array(
            [[col0 * p, row0 * p], [min((col1 + 1) * p, self.resized_w), min((row1 + 1) * p, self.resized_h)]]
        )
        return self.input_to_image(corners).reshape(4).astype(np.float32)


@dataclass
class GroundedPrompts:
    """SAM prompts for one object found by CLIP.

    Attributes:
        points: ``(N, 2)`` float32 (x, y) original pixels; positives first.
        labels: ``(N,)`` int64, 1 = foreground, 0 = background.
        box: ``(4,)`` float32 x0, y0, x1, y1 original pixels, or None.
        score: the raw similarity at the top positive cell.
        heatmap: ``(gh, gw)`` float32, the raw similarity map the prompts came from.
    """

    points: np.ndarray
    labels: np.ndarray
    box: np.ndarray | None
    score: float
    heatmap: np.ndarray = field(repr=False)


def _as_grid_map(sim: np.ndarray | torch.Tensor, geometry: Geometry) -> np.ndarray:
    arr = (
        sim.detach().float().cpu().numpy()
        if isinstance(sim, torch.Tensor)
        else np.asarray(sim, dtype=np.float64)
    )
    arr = arr.astype(np.float64)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.shape != geometry.grid_shape:
        raise InputError(f"similarity map must be (gh, gw) = {geometry.grid_shape}, got {arr.shape}")
    if not np.isfinite(arr).all():
        raise InputError("the similarity map contains NaN or infinite values")
    return arr


def smooth_map(grid: np.ndarray) -> np.ndarray:
    """Light separable ``[1, 2, 1] / 4`` smoothing of a ``(gh, gw)`` map, edges replicated."""
    padded = np.pad(grid, 1, mode="edge")
    rows = (padded[:-2] + 2 * padded[1:-1] + padded[2:]) / 4.0
    return (rows[:, :-2] + 2 * rows[:, 1:-1] + rows[:, 2:]) / 4.0


def normalise_map(grid: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1]; a flat map (range < 1e-12) becomes all ones (every cell is the peak)."""
    low, high = float(grid.min()), float(grid.max())
    if high - low < 1e-12:
        return np.ones_like(grid)
    return (grid - low) / (high - low)


def _ordered_peaks(norm: np.ndarray) -> list[tuple[int, int]]:
    """Local maxima (>= all 8 neighbours) as ``(row, col)``, by value desc, ties nearest the centre."""
    padded = np.pad(norm, 1, mode="constant", constant_values=-np.inf)
    h, w = norm.shape
    neighbours = np.stack([padded[1 + dr : 1 + dr + h, 1 + dc : 1 + dc + w] for dr, dc in _NEIGHBOURS])
    rows, cols = np.nonzero(norm >= neighbours.max(0))
    centre_dist = (rows - (h - 1) / 2.0) ** 2 + (cols - (w - 1) / 2.0) ** 2
    order = np.lexsort((centre_dist, -norm[rows, cols]))
    return [(int(rows[i]), int(cols[i])) for i in order]


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of a bool ``(gh, gw)`` mask: labels (0 = off, 1..n), n."""
    labels = np.zeros(mask.shape, dtype=np.int64)
    count = 0
    for start in zip(*np.nonzero(mask)):
        if labels[start]:
            continue
        count += 1
        labels[start] = count
        stack = [start]
        while stack:
            r, c = stack.pop()
            for dr, dc in _NEIGHBOURS:
                rr, cc = r + dr, c + dc
                if (
                    0 <= rr < mask.shape[0]
                    and 0 <= cc < mask.shape[1]
                    and mask[rr, cc]
                    and not labels[rr, cc]
                ):
                    labels[rr, cc] = count
                    stack.append((rr, cc))
    return labels, count


def _far_enough(cell: tuple[int, int], chosen: list[tuple[int, int]], min_separation: float) -> bool:
    return all(math.dist(cell, other) >= min_separation for other in chosen)


def _has_valley(norm: np.ndarray, a: tuple[int, int], b: tuple[int, int], ratio: float) -> bool:
    """True when the straight line a -> b dips below ``ratio`` x the lower of the two peaks."""
    steps = max(abs(a[0] - b[0]), abs(a[1] - b[1])) + 1
    rows = np.rint(np.linspace(a[0], b[0], steps)).astype(int)
    cols = np.rint(np.linspace(a[1], b[1], steps)).astype(int)
    return float(norm[rows, cols].min()) < ratio * min(norm[a], norm[b])


def _cells_to_points(
    cells: list[tuple[int, int]], geometry: Geometry, refined: np.ndarray | None
) -> np.ndarray:
    """``(row, col)`` cells -> ``(N, 2)`` float32 (x, y) original pixels (cell centres or refined)."""
    if not cells:
        return np.zeros((0, 2), dtype=np.float32)
    if refined is None:
        return geometry.grid_to_image(np.array([[c, r] for r, c in cells])).astype(np.float32)
    return np.concatenate([_refine(refined, geometry, cell) for cell in cells]).astype(np.float32)


def upsample_to_input(sim: np.ndarray, geometry: Geometry) -> np.ndarray:
    """``(gh, gw)`` grid map -> ``(h', w')`` input-frame map (bilinear, cell values at cell centres)."""
    p = geometry.patch_size
    grid = torch.from_numpy(np.ascontiguousarray(sim, dtype=np.float32))[None, None]
    up = F.interpolate(grid, size=(sim.shape[0] * p, sim.shape[1] * p), mode="bilinear", align_corners=False)
    return up[0, 0, : geometry.resized_h, : geometry.resized_w].numpy()


def upsample_to_image(sim: np.ndarray | torch.Tensor, geometry: Geometry) -> np.ndarray:
    """``(gh, gw)`` grid map -> ``(H, W)`` float32 map in original pixels (bilinear), e.g. for overlays."""
    grid = _as_grid_map(sim, geometry)
    up = torch.from_numpy(upsample_to_input(grid, geometry))[None, None]
    return F.interpolate(up, size=(geometry.height, geometry.width), mode="bilinear", align_corners=False)[
        0, 0
    ].numpy()


def _refine(up: np.ndarray, geometry: Geometry, cell: tuple[int, int]) -> np.ndarray:
    """Argmax of the upsampled input-frame map inside one cell -> ``(1, 2)`` original pixels."""
    p, (r, c) = geometry.patch_size, cell
    window = up[r * p : min((r + 1) * p, geometry.resized_h), c * p : min((c + 1) * p, geometry.resized_w)]
    dy, dx = np.unravel_index(int(np.argmax(window)), window.shape)
    return geometry.input_to_image(np.array([[c * p + dx + 0.5, r * p + dy + 0.5]]))


def _component_box(geometry: Geometry, cells: np.ndarray) -> np.ndarray:
    """Bool ``(gh, gw)`` cell set -> ``(4,)`` float32 box in original pixels."""
    rows, cols = np.nonzero(cells)
    return geometry.cells_to_box(int(cols.min()), int(rows.min()), int(cols.max()), int(rows.max()))


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 < value <= 1.0:
        raise InputError(f"{name} is relative to the map's range and must be in (0, 1], got {value}")


def _lowest_cells(
    norm: np.ndarray, exclude: np.ndarray, count: int, min_separation: float
) -> list[tuple[int, int]]:
    """Up to ``count`` lowest cells outside ``exclude``, pairwise at least ``min_separation`` apart."""
    chosen: list[tuple[int, int]] = []
    for flat in np.argsort(norm, axis=None, kind="stable"):
        if len(chosen) >= count:
            break
        cell = (int(flat // norm.shape[1]), int(flat % norm.shape[1]))
        if not exclude[cell] and _far_enough(cell, chosen, min_separation):
            chosen.append(cell)
    return chosen


def prompts_from_similarity(
    sim: np.ndarray | torch.Tensor,
    geometry: Geometry,
    *,
    num_positive: int = 1,
    num_negative: int = 1,
    with_box: bool = False,
    box_threshold: float = 0.5,
    peak_threshold: float = 0.8,
    min_separation: float = 2.0,
    smooth: bool = True,
    refine: bool = False,
) -> GroundedPrompts:
    """Point (and box) prompts for the single best region of a ``(gh, gw)`` similarity map.

    The map is lightly smoothed (:func:`smooth_map`) and min-max normalised. The top positive is the
    highest local maximum; up to ``num_positive - 1`` more are local maxima with normalised value
    >= ``peak_threshold`` inside the same component (cells >= ``box_threshold`` connected to the top
    peak), at least ``min_separation`` cells apart. Negatives are the lowest cells outside that
    component, ``min_separation`` apart. The box bounds that component. Points are cell centres in
    original pixels, or with ``refine`` the argmax of the bilinearly upsampled map inside the cell.
    A flat map gives the centre cell and a whole-image component (no negatives).
    """
    _check_fraction("box_threshold", box_threshold)
    _check_fraction("peak_threshold", peak_threshold)
    if num_positive < 1 or num_negative < 0:
        raise InputError(f"need num_positive >= 1 and num_negative >= 0, got {num_positive}, {num_negative}")
    raw = _as_grid_map(sim, geometry)
    norm = normalise_map(smooth_map(raw) if smooth else raw)
    peaks = _ordered_peaks(norm)
    top = peaks[0]
    labels, _ = label_components(norm >= box_threshold)  # norm[top] == 1, so top is inside
    component = labels == labels[top]
    positives = [top]
    for cell in peaks[1:]:
        if len(positives) >= num_positive:
            break
        if norm[cell] >= peak_threshold and component[cell] and _far_enough(cell, positives, min_separation):
            positives.append(cell)
    negatives = _lowest_cells(norm, component, num_negative, min_separation)
    refined = upsample_to_input(raw, geometry) if refine else None
    points = _cells_to_points(positives + negatives, geometry, refined)
    point_labels = np.array([1] * len(positives) + [0] * len(negatives), dtype=np.int64)
    box = _component_box(geometry, component) if with_box else None
    return GroundedPrompts(points, point_labels, box, float(raw[top]), raw.astype(np.float32))


def _select_instance_peaks(
    norm: np.ndarray, labels: np.ndarray, peaks_per_component: int, min_separation: float, valley: float
) -> list[tuple[int, int]]:
    """Each component's top peak, plus separated peaks with a valley between them and the others."""
    chosen: list[tuple[int, int]] = []
    for cell in _ordered_peaks(norm):
        if not labels[cell]:
            continue
        same = [other for other in chosen if labels[other] == labels[cell]]
        if not same:
            chosen.append(cell)
        elif (
            len(same) < peaks_per_component
            and _far_enough(cell, same, min_separation)
            and all(_has_valley(norm, cell, other, valley) for other in same)
        ):
            chosen.append(cell)
    return chosen


def _assign_cells(labels: np.ndarray, peaks: list[tuple[int, int]]) -> np.ndarray:
    """Each on-cell -> index of the nearest peak of its component (-1 for off cells), ``(gh, gw)``."""
    owner = np.full(labels.shape, -1, dtype=np.int64)
    rows, cols = np.nonzero(labels)
    for r, c in zip(rows, cols):
        same = [i for i, p in enumerate(peaks) if labels[p] == labels[r, c]]
        owner[r, c] = min(same, key=lambda i: (peaks[i][0] - r) ** 2 + (peaks[i][1] - c) ** 2)
    return owner


def instance_candidates(
    sim: np.ndarray | torch.Tensor,
    geometry: Geometry,
    *,
    max_instances: int = 8,
    threshold: float = 0.5,
    peaks_per_component: int = 1,
    min_separation: float = 3.0,
    valley: float = 0.8,
    min_score: float | None = None,
    with_box: bool = True,
    smooth: bool = True,
    refine: bool = False,
) -> list[GroundedPrompts]:
    """One prompt set per region of a ``(gh, gw)`` map ("all cars" -> one point (+ box) per car).

    Regions are the 8-connected components of the smoothed, min-max normalised map >= ``threshold``.
    Each gives its top peak; with ``peaks_per_component > 1`` a component (touching objects) is split
    at further local maxima at least ``min_separation`` cells from the others and separated from them
    by a valley (the line between dips below ``valley`` x the lower peak); its cells go to the nearest
    peak. Each candidate has one positive point (cell centre, or refined), the box of its cells
    (``with_box``), and ``score`` = the raw map at the peak; candidates with ``score < min_score`` are
    dropped. Sorted by score, best first, at most ``max_instances``. A flat map gives exactly one
    candidate: the centre cell with a whole-image box.
    """
    _check_fraction("threshold", threshold)
    if max_instances < 1 or peaks_per_component < 1:
        raise InputError("max_instances and peaks_per_component must be >= 1")
    raw = _as_grid_map(sim, geometry)
    norm = normalise_map(smooth_map(raw) if smooth else raw)
    labels, _ = label_components(norm >= threshold)
    peaks = _select_instance_peaks(norm, labels, peaks_per_component, min_separation, valley)
    owner = _assign_cells(labels, peaks)
    refined = upsample_to_input(raw, geometry) if refine else None
    heatmap = raw.astype(np.float32)
    candidates = []
    for index, peak in enumerate(peaks):
        score = float(raw[peak])
        if min_score is not None and score < min_score:
            continue
        box = _component_box(geometry, owner == index) if with_box else None
        points = _cells_to_points([peak], geometry, refined)
        candidates.append(GroundedPrompts(points, np.ones(1, dtype=np.int64), box, score, heatmap))
    candidates.sort(key=lambda cand: -cand.score)
    return candidates[:max_instances]


def square_crop(
    image: np.ndarray, mask: np.ndarray, enlarge: float, fill: np.ndarray, grey_outside: bool = True
) -> np.ndarray:
    """A square ``(s, s, 3)`` uint8 crop around the mask's box enlarged ``enlarge`` times.

    Parts outside the image, and (``grey_outside``) pixels outside the mask, get the colour ``fill``.
    """
    box = mask_box(mask)
    if box is None:
        raise InputError("the mask is empty: there is nothing to crop")
    x0, y0, x1, y1 = box
    side = max(1, int(np.ceil(max(x1 - x0, y1 - y0) * enlarge)))
    left = int(np.floor((x0 + x1 - side) / 2.0))
    top = int(np.floor((y0 + y1 - side) / 2.0))
    crop = np.empty((side, side, 3), dtype=np.uint8)
    crop[:] = fill
    ix0, iy0 = max(left, 0), max(top, 0)
    ix1, iy1 = min(left + side, image.shape[1]), min(top + side, image.shape[0])
    patch = image[iy0:iy1, ix0:ix1]
    if grey_outside:
        patch = np.where(mask[iy0:iy1, ix0:ix1, None], patch, fill)
    crop[iy0 - top : iy1 - top, ix0 - left : ix1 - left] = patch
    return crop

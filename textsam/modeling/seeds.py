"""Click seeds from the image embedding: one click per region the encoder sees as one thing.

SAM's automatic mask generator clicks a regular grid (16 x 16 = 256 clicks for a text request), and most
clicks land on an object another click already found, or on background that yields no confident mask. The
image embedding already says where the regions are: tokens of one object have similar features. Here the
tokens inside the image (the padding is left out) are grouped by spherical k-means on their unit-normalised
features (``clusters`` groups; deterministic farthest-point initialisation), each group is split into its
4-connected regions, regions of fewer than ``min_tokens`` tokens are dropped, and each region's deepest
token (farthest from its edge, :func:`textsam.ops.deepest_points`) becomes a click, largest regions first,
at most ``max_seeds``. Decoding those clicks gives the candidate objects in a tenth of the grid's clicks.

Frames: ``features (1, C, h, w)`` is the encoder's output for the padded square model input of side
``img_size``; ``input_size`` (height, width) is the resized image inside it; clicks are ``(x, y)`` pixels of
that model-input frame (pixel centres at integers), as the decoder takes them.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InputError
from ..ops import deepest_points

__all__ = ["embedding_seeds", "spherical_kmeans", "connected_regions"]


def spherical_kmeans(x: Tensor, k: int, iterations: int = 10) -> Tensor:
    """Cluster the unit rows of ``x (N, C)`` into ``min(k, N)`` groups by cosine similarity; ``(N,)`` long
    group ids. Initial centres: the row least like the mean, then repeatedly the row farthest from the
    centres so far (deterministic)."""
    k = min(k, x.shape[0])
    first = int((x @ x.mean(0)).argmin())
    centres = [x[first]]
    distance = 1 - x @ x[first]
    for _ in range(k - 1):
        far = int(distance.argmax())
        centres.append(x[far])
        distance = torch.minimum(distance, 1 - x @ x[far])
    c = torch.stack(centres)
    groups = (x @ c.T).argmax(1)
    for _ in range(iterations):
        c = F.normalize(torch.zeros_like(c).index_add_(0, groups, x), dim=1)
        new = (x @ c.T).argmax(1)
        if torch.equal(new, groups):
            break
        groups = new
    return groups


def connected_regions(labels: np.ndarray) -> np.ndarray:
    """4-connected regions of equal values in an ``(h, w)`` integer map: ``(h, w)`` int64 region ids, each
    region named by its first cell in raster order (min-label propagation with pointer jumping)."""
    h, w = labels.shape
    ids = np.arange(h * w, dtype=np.int64).reshape(h, w)
    same_right = labels[:, 1:] == labels[:, :-1]
    same_down = labels[1:, :] == labels[:-1, :]
    while True:
        new = ids.copy()
        np.minimum(new[:, 1:], np.where(same_right, ids[:, :-1], new[:, 1:]), out=new[:, 1:])
        np.minimum(new[:, :-1], np.where(same_right, ids[:, 1:], new[:, :-1]), out=new[:, :-1])
        np.minimum(new[1:, :], np.where(same_down, ids[:-1, :], new[1:, :]), out=new[1:, :])
        np.minimum(new[:-1, :], np.where(same_down, ids[1:, :], new[:-1, :]), out=new[:-1, :])
        flat = new.reshape(-1)
        flat = flat[flat]  # pointer jumping: a cell takes its root's root
        new = flat.reshape(h, w)
        if np.array_equal(new, ids):
            return ids
        ids = new


def embedding_seeds(features: Tensor, input_size: tuple[int, int], img_size: int, *, clusters: int = 16,
                    min_tokens: int = 3, max_seeds: int = 64) -> np.ndarray:
    """Clicks ``(P, 2)`` float (x, y, model-input frame), one per region of the embedding (see the module
    docstring); ``features (1, C, h, w)``, ``input_size`` the resized image's (height, width) inside the
    padded ``img_size`` square. P is at most ``max_seeds``; largest regions first."""
    if features.ndim != 4 or features.shape[0] != 1:
        raise InputError(f"expected one image's embedding (1, C, h, w), got {tuple(features.shape)}")
    if clusters < 1 or min_tokens < 1 or max_seeds < 1:
        raise InputError("clusters, min_tokens and max_seeds must be at least 1")
    _, c, h, w = features.shape
    patch = img_size / w
    vh = max(1, min(h, int(np.ceil(input_size[0] / patch))))
    vw = max(1, min(w, int(np.ceil(input_size[1] / patch))))
    # on the CPU (at most 4096 x 256 values): on a GPU index_add_'s atomic sums would make the groups, and so the
    # seeds, vary from run to run near ties, and every argmax of the loop would wait for the device
    x = F.normalize(features[0, :, :vh, :vw].reshape(c, -1).T.float().cpu(), dim=1)
    groups = spherical_kmeans(x, clusters).reshape(vh, vw).numpy()
    regions = connected_regions(groups)
    names, sizes = np.unique(regions, return_counts=True)
    order = np.argsort(-sizes, kind="stable")
    names = names[order][sizes[order] >= min_tokens][:max_seeds]
    if len(names) == 0:
        return np.zeros((0, 2))
    masks = torch.from_numpy(regions[None] == names[:, None, None])
    tokens = deepest_points(masks).numpy().astype(np.float64)  # (P, 2) token x, y
    xy = (tokens + 0.5) * patch - 0.5
    return np.minimum(xy, np.array([input_size[1] - 1, input_size[0] - 1], dtype=np.float64))

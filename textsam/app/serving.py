"""Serving the app: models loaded once and shared, an LRU of embedded images bounded by memory, a few
compute threads sized to the machine, and the address check before the server starts.

Nothing here holds global state: a :class:`ModelHub` is made per app (by :class:`~textsam.app.handlers.WebApp`)
and shared by its sessions.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from textsam.errors import InputError, WeightsError

from . import DEMO_MODEL

logger = logging.getLogger(__name__)


def short_message(err: BaseException, limit: int = 400) -> str:
    """An error's message, cut to ``limit`` characters (CLIP errors list every model name)."""
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def default_model_factory(name: str, clip: str | None = None) -> Any:
    """``create_model(name, clip=clip)``; the demo model falls back to random weights when its file is missing."""
    import textsam

    try:
        return textsam.create_model(name, clip=clip)
    except WeightsError as err:
        if name != DEMO_MODEL:
            raise
        logger.warning("%s weights unavailable (%s); using random weights", name, err)
        return textsam.create_model(name, pretrained=False, clip=clip)


def fast_model_factory(name: str) -> Any:
    """:func:`default_model_factory` for ``textsam app --fast``: a published SAM gets the fast path's CLIP
    (:func:`textsam.factory.fast_clip`, ViT-B/32), loaded when the model is."""
    from textsam.factory import fast_clip

    return default_model_factory(name, fast_clip(name))


def weights_model_factory(name: str, *, checkpoint: str | Path | None = None, clip: str | None = None,
                          text_head: str | Path | bool | None = None, fast: bool = False) -> Callable[[str], Any]:
    """The app's model factory for ``textsam app --model NAME --checkpoint / --clip / --text-head /
    --no-text-head``: model ``name`` with those weights (with ``fast``, the fast path's CLIP unless ``clip`` or
    the weights name one: :func:`textsam.factory.fast_clip`); any other model as :func:`default_model_factory`
    (or :func:`fast_model_factory`) builds it. A file that is not there is an :class:`InputError` at once."""
    import textsam
    from textsam.factory import fast_clip

    for what, path in (("SAM weights", checkpoint), ("text head", text_head)):
        if isinstance(path, (str, Path)) and not Path(path).is_file():
            raise InputError(f"{what} file not found: {path}")

    def factory(model_name: str) -> Any:
        if model_name != name:
            return fast_model_factory(model_name) if fast else default_model_factory(model_name)
        chosen = fast_clip(name, clip, text_head, checkpoint) if fast else clip
        return textsam.create_model(name, checkpoint=checkpoint, clip=chosen, text_head=text_head)

    return factory


def fast_predictor(model: Any) -> Any:
    """The fast path's ``TextSamPredictor`` (``textsam app --fast``; see :meth:`textsam.TextSamPredictor.fast`)."""
    import textsam

    return textsam.TextSamPredictor.fast(model)


def image_key(image: np.ndarray) -> str:
    """A content hash of an ``(H, W, 3)`` uint8 image (shape included)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(repr(image.shape).encode())
    h.update(np.ascontiguousarray(image).data)
    return h.hexdigest()


def usable_cpus() -> int:
    """CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def serving_plan(cpus: int | None = None) -> tuple[int, int, int]:
    """``(workers, heavy_slots, torch_threads)`` for a machine with ``cpus`` CPUs: up to 4 expensive jobs
    at a time sharing the CPUs (``torch_threads`` each), plus one worker kept for cheap requests."""
    cpus = cpus or usable_cpus()
    heavy = min(cpus, 4)
    return heavy + 1, heavy, max(1, cpus // heavy)


def default_cache_bytes() -> int:
    """The embedding cache's default budget: 1/16 of the machine's memory, between 256 MB and 2 GB."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        total = 8 << 30
    return int(min(2 << 30, max(256 << 20, total // 16)))


def footprint(obj: Any, depth: int = 2) -> int:
    """Bytes held by the tensors and arrays of ``obj``'s attributes (and theirs, ``depth`` levels down;
    lists/tuples included; modules, whose weights are shared, are skipped): a cached predictor's size."""
    import torch

    total = 0
    values = list(vars(obj).values()) if hasattr(obj, "__dict__") else []
    while values:
        v = values.pop()
        if isinstance(v, torch.nn.Module) or isinstance(v, type):
            continue
        if isinstance(v, torch.Tensor):
            total += v.numel() * v.element_size()
        elif isinstance(v, np.ndarray):
            total += v.nbytes
        elif isinstance(v, (list, tuple)):
            values.extend(v)
        elif depth > 0 and hasattr(v, "__dict__"):
            total += footprint(v, depth - 1)
    return total


class ComputePool:
    """Model work on a few threads sized to the machine, cheap jobs first.

    ``workers`` threads take jobs in arrival order; an *expensive* job (a new image's embedding, its first
    text request) may hold at most ``heavy_slots`` of them, so the others stay free for cheap jobs (a click
    or a phrase on an image already embedded): when the oldest job is expensive and the expensive slots are
    full, the oldest cheap job goes first. Cheap jobs never wait behind another image's first pass, and
    expensive ones are never starved by a stream of cheap ones. Callers block in :meth:`run` until their job
    is done. Threads start on first use and are daemons.
    """

    def __init__(self, workers: int, heavy_slots: int | None = None) -> None:
        if workers < 1:
            raise InputError(f"workers must be >= 1, got {workers}")
        self.workers = workers
        self.heavy_slots = max(1, min(workers - 1 if workers > 1 else 1, heavy_slots or workers))
        self._cv = threading.Condition()
        self._jobs: tuple[deque, deque] = (deque(), deque())  # cheap, expensive: (arrival, fn, future)
        self._arrivals = 0
        self._heavy_running = 0
        self._threads: list[threading.Thread] = []

    def run(self, fn: Callable[[], Any], heavy: bool = False) -> Any:
        """``fn()`` on a worker thread; returns its result or raises its exception."""
        future: Future = Future()
        with self._cv:
            while len(self._threads) < self.workers:
                t = threading.Thread(target=self._loop, name=f"textsam-compute-{len(self._threads)}", daemon=True)
                t.start()
                self._threads.append(t)
            self._arrivals += 1
            self._jobs[bool(heavy)].append((self._arrivals, fn, future))
            self._cv.notify()
        return future.result()

    def _next(self) -> tuple[Callable[[], Any], Future, bool]:
        with self._cv:
            while True:
                cheap, expensive = self._jobs
                heavy_free = self._heavy_running < self.heavy_slots
                if expensive and heavy_free and (not cheap or expensive[0][0] < cheap[0][0]):
                    self._heavy_running += 1
                    return (*expensive.popleft()[1:], True)
                if cheap:
                    return (*cheap.popleft()[1:], False)
                self._cv.wait()

    def _loop(self) -> None:
        while True:
            fn, future, heavy = self._next()
            try:
                if future.set_running_or_notify_cancel():
                    future.set_result(fn())
            except BaseException as err:  # noqa: BLE001 - handed to the caller
                future.set_exception(err)
            finally:
                if heavy:
                    with self._cv:
                        self._heavy_running -= 1
                        self._cv.notify_all()


@dataclass
class _Entry:
    """One cached image for one model: its predictor (``None`` until embedded) and what it has computed."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    predictor: Any = None
    text_ready: bool = False  # a phrase has been answered: per-image text state is computed
    nbytes: int = 0


class ModelHub:
    """Models loaded once and shared by every session, plus an LRU cache of embedded images.

    ``predictor_factory(model)`` makes a predictor (``set_image``/``predict``); entries are keyed by
    ``(model name, image hash)`` so an image is embedded once, whoever clicks on it. The cache is bounded
    by memory (``cache_bytes``: what the cached predictors hold; default :func:`default_cache_bytes`) and,
    optionally, by a count (``cache_size``). Requests on the same image take turns (its predictor keeps
    per-image state); requests on different images run in parallel on a :class:`ComputePool` of
    ``workers`` threads (default: :func:`serving_plan`).
    """

    def __init__(
        self, model_factory: Callable[[str], Any], predictor_factory: Callable[[Any], Any],
        cache_size: int | None = None, *, cache_bytes: int | None = None, workers: int | None = None,
    ) -> None:
        if cache_size is not None and cache_size < 1:
            raise InputError(f"cache_size must be >= 1, got {cache_size}")
        self._factory, self._predictor_factory, self.cache_size = model_factory, predictor_factory, cache_size
        self.cache_bytes = cache_bytes if cache_bytes is not None else default_cache_bytes()
        default_workers, heavy, _ = serving_plan()
        self.pool = ComputePool(workers or default_workers, heavy_slots=heavy)
        self._models: dict[str, Any] = {}
        self._load_lock, self._cache_lock = threading.Lock(), threading.Lock()
        self._cache: OrderedDict[tuple[str, str], _Entry] = OrderedDict()

    def model(self, name: str) -> Any:
        """The loaded model ``name`` (loaded on first use); raises TextSamError when it cannot load."""
        with self._load_lock:
            if name not in self._models:
                self._models[name] = self._factory(name)
            return self._models[name]

    def notice(self, name: str) -> str:
        """A warning for the page when ``name`` runs on random weights, else ``""``."""
        if getattr(self.model(name), "pretrained", True) is False:
            return (f"**Note:** the weights of `{name}` are not available here, so it runs with *random "
                    "weights*: masks are not meaningful (and text prompts may be unavailable).")
        return ""

    def _entry(self, name: str, key: str) -> _Entry:
        with self._cache_lock:
            entry = self._cache.get((name, key))
            if entry is None:
                entry = self._cache[(name, key)] = _Entry()
            else:
                self._cache.move_to_end((name, key))
            return entry

    def _run(self, name: str, image: np.ndarray, key: str, kwargs: dict | None) -> Any:
        """Embed ``image`` when new, then ``predict(**kwargs)`` (nothing more when ``kwargs`` is None)."""
        model = self.model(name)
        entry = self._entry(name, key)
        text = None if kwargs is None else kwargs.get("text")
        first_text = text is not None and kwargs.get("instances", "one") == "one"

        def work() -> Any:
            if entry.predictor is None:
                pred = self._predictor_factory(model)
                pred.set_image(image)
                entry.predictor = pred
            if kwargs is None:
                return None
            out = entry.predictor.predict(**kwargs)
            entry.text_ready |= first_text
            return out

        with entry.lock:
            heavy = entry.predictor is None or (first_text and not entry.text_ready)
            try:
                return self.pool.run(work, heavy)
            finally:
                self._account(name, key, entry)

    def _account(self, name: str, key: str, entry: _Entry) -> None:
        """Update the entry's size and evict the least recently used images over the budget."""
        size = footprint(entry.predictor) if entry.predictor is not None else 0
        with self._cache_lock:
            entry.nbytes = size
            if entry.predictor is None and self._cache.get((name, key)) is entry:
                del self._cache[(name, key)]
            total = sum(e.nbytes for e in self._cache.values())
            while len(self._cache) > 1 and (total > self.cache_bytes or (
                    self.cache_size is not None and len(self._cache) > self.cache_size)):
                _, old = self._cache.popitem(last=False)
                total -= old.nbytes

    def embed(self, name: str, image: np.ndarray, key: str) -> None:
        """Make sure ``image`` is embedded for ``name`` (so later clicks only run the decoder)."""
        self._run(name, image, key, None)

    def predict(self, name: str, image: np.ndarray, key: str, **kwargs: Any) -> Any:
        """``predictor.predict(**kwargs)`` on ``image``, embedding it only when not cached."""
        return self._run(name, image, key, kwargs)

    def cached(self, name: str, key: str) -> bool:
        entry = self._cache.get((name, key))
        return entry is not None and entry.predictor is not None


# ------------------------------------------------------------------------------------------ address
def port_in_use(host: str, port: int | None) -> str:
    """The message for a port that another server holds, with a free-port suggestion."""
    other = 7861 if port == 7860 else 7860
    return (f"port {port} on {host} is already in use (another textsam app?): pass --port with a free port, "
            f"e.g. --port {other}")


def check_address(host: str, port: int) -> None:
    """Raise InputError, saying which option to change, when ``host:port`` cannot be listened on."""
    import errno
    import socket

    if not 0 < port < 65536:
        raise InputError(f"--port {port} is not a TCP port: pass --port with a number from 1 to 65535, e.g. 7860")
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError):
        raise InputError(f"--host {host!r} is not a known address: pass --host 127.0.0.1 (this machine only) "
                         "or --host 0.0.0.0 (every network interface)") from None
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does
        try:
            sock.bind(addr)
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise InputError(port_in_use(host, port)) from None
            if err.errno == errno.EACCES:
                raise InputError(f"no permission to listen on port {port} (ports below 1024 need root): pass "
                                 "--port with a number above 1023, e.g. --port 7860") from None
            raise InputError(f"cannot listen on {host}:{port} ({err.strerror}): pass --host 127.0.0.1 or "
                             "another --port") from None


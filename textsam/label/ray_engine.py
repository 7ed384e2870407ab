"""``textsam label --engine ray``: the same labeller on Ray Data, for more images than one machine labels in time.

Where things run:

* the driver (the ``textsam label`` process) collects the images, plans the store and sends Ray Data the list
  of images *not yet labelled* (paths only: a resumed run sends only what is missing);
* each Ray actor builds ONE predictor (the same model options as the local run) and, per image, reads the file
  itself and calls :func:`textsam.label.run.label_image`, the function the local run calls;
* the actor returns the record (canonical JSON text) to the driver, which writes it into the per-image store
  ``OUT/.textsam-label/images/`` (temporary name, then rename) as soon as it arrives, then writes the dataset
  with :func:`textsam.label.writers.write_from_store`, exactly as the local run does.

Only the driver writes into OUT (one writer, no shared output folder needed on a cluster); the workers only need
to read the images, so on a multi-node cluster the image paths must be reachable from every node (a shared or
replicated file system). Each streamed result is one small record (RLE strings), so the driver is no bottleneck.
A killed driver leaves the records it has written; the same command again labels only the rest.

Ray is an optional extra: ``pip install 'textsam[distributed]'``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from textsam.errors import InputError, TextSamError

from .inputs import ImageRef
from .run import LoopReport, Mode
from .store import Store

__all__ = ["label_with_ray", "require_ray", "RAY_MISSING"]

logger = logging.getLogger(__name__)

RAY_MISSING = "--engine ray needs Ray Data, which is not installed: pip install 'textsam[distributed]'"


def require_ray() -> Any:
    """``ray`` (with ``ray.data``), or InputError with the install line when it is missing."""
    try:
        import ray
        import ray.data  # noqa: F401 - the `data` extra (pyarrow, pandas)
    except ImportError:
        raise InputError(RAY_MISSING) from None
    return ray


class _Labeller:
    """A Ray Data actor: one predictor, built once; labels a batch of image paths into records (JSON text)."""

    def __init__(self, model_args: dict[str, Any], phrases: list[str], instances: Mode,
                 negative_text: str | None = None) -> None:
        import textsam
        from textsam.allocator import keep_freed_memory

        keep_freed_memory()  # an actor has its worker process to itself (textsam/allocator.py; not timed under Ray)
        model_args = dict(model_args)
        name, fast = model_args.pop("name"), model_args.pop("fast", False)
        model = textsam.create_model(name, **model_args)
        self.predictor = textsam.TextSamPredictor.fast(model) if fast else textsam.TextSamPredictor(model)
        self.phrases = phrases
        self.instances = instances
        self.negative_text = negative_text

    def _one(self, path: str, file: str) -> tuple[str, str]:
        """``(status, payload)``: ``("ok", record JSON)``, ``("skipped", record JSON)`` or ``("failed", error)``."""
        from textsam.label import run
        from textsam.transforms import load_image

        try:
            rgb = load_image(Path(path))
        except (TextSamError, OSError) as err:
            return "skipped", json.dumps({"skipped": str(err).replace(path, file)})
        try:
            record = run.label_image(self.predictor, rgb, self.phrases, instances=self.instances,
                                     negative_text=self.negative_text)
        except TextSamError as err:
            return "skipped", json.dumps({"skipped": str(err)})
        except Exception as err:  # noqa: BLE001 - reported per image; the other images go on
            return "failed", f"{type(err).__name__}: {err}"
        return "ok", json.dumps(record)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {"key": [], "file": [], "status": [], "payload": []}
        for path, file, key in zip(batch["path"], batch["file"], batch["key"]):
            status, payload = self._one(str(path), str(file))
            out["key"].append(str(key))
            out["file"].append(str(file))
            out["status"].append(status)
            out["payload"].append(payload)
        return out


def _textsam_cause(err: BaseException) -> TextSamError | None:
    """The TextSamError a Ray error wraps (e.g. a missing checkpoint in an actor's constructor), if any."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [err]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, TextSamError):
            return e
        todo += [getattr(e, "cause", None), e.__cause__, e.__context__]
    return None


def _init(ray: Any, address: str | None, workers: int) -> bool:
    """Start a local Ray instance (``address`` None: on this machine, loopback only, ``workers`` CPUs, no
    dashboard, no usage stats) or connect to ``address``; False when Ray was already initialised here."""
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no report to the network
    common = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": False,
              "configure_logging": False}
    if address is None:
        ray.init(address="local", num_cpus=workers, _node_ip_address="127.0.0.1", **common)
    else:
        ray.init(address=address, **common)
    return True


def label_with_ray(
    refs: Sequence[ImageRef],
    entries: Sequence[dict[str, Any]],
    store: Store,
    phrases: Sequence[str],
    model_args: dict[str, Any],
    *,
    instances: Mode = "all",
    negative_text: str | None = None,
    workers: int = 2,
    num_gpus_per_worker: float = 0.0,
    address: str | None = None,
    progress: bool = True,
) -> LoopReport:
    """Label every image of ``entries`` without a record in ``store`` on Ray Data (``workers`` actors, one
    predictor each), writing each record into ``store`` as it comes back; the same contract as
    :func:`textsam.label.run.label_into_store` (whose ``make_predictor`` is here ``model_args``: the keyword
    arguments of :func:`textsam.create_model`, with the model name as ``"name"``).

    Args:
        workers: the number of actors (and, for the local instance, its CPUs).
        num_gpus_per_worker: GPUs each actor reserves (0: CPU; 1 with ``device="cuda"``: one GPU each).
        address: a running Ray cluster (``"auto"``, ``"ray://host:10001"``); None starts a local instance on
            this machine (loopback only) and shuts it down at the end.

    Raises:
        InputError: Ray is not installed, ``workers < 1``, or the cluster has fewer GPUs than asked for.
    """
    from tqdm import tqdm

    if workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}")
    ray = require_ray()
    report = LoopReport()
    todo = [(ref, e) for ref, e in zip(refs, entries) if e["key"] is not None and not store.has(e["key"])]
    if not todo:
        return report
    started = _init(ray, address, workers)
    try:
        if num_gpus_per_worker > 0:
            have = float(ray.cluster_resources().get("GPU", 0))
            if have < workers * num_gpus_per_worker:
                raise InputError(f"{workers} worker(s) with {num_gpus_per_worker:g} GPU each need "
                                 f"{workers * num_gpus_per_worker:g} GPU(s); the Ray cluster has {have:g}: give fewer "
                                 "--workers or --device cpu")
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # our own bar below: images/s and ETA, as in the local run
        ctx.print_on_execution_start = False
        logging.getLogger("ray.data").setLevel(logging.ERROR)  # its plan, timings and notices are in its logs
        ds = ray.data.from_items(
            [{"path": str(ref.path.resolve()), "file": ref.file, "key": e["key"]} for ref, e in todo],
            override_num_blocks=len(todo),  # one image per block: streamed to whichever actor is free
        )
        ds = ds.map_batches(
            _Labeller,
            fn_constructor_kwargs={"model_args": dict(model_args), "phrases": list(phrases), "instances": instances,
                                   "negative_text": negative_text},
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=workers),  # `workers` actors, each built once
            num_cpus=1,
            num_gpus=num_gpus_per_worker or None,
        )
        rows: Iterator[dict[str, Any]] = ds.iter_rows()
        bar = tqdm(total=len(todo), desc="label (ray)", unit="img", disable=not progress, file=sys.stderr)
        try:
            for row in rows:
                key, file, status, payload = (str(row[k]) for k in ("key", "file", "status", "payload"))
                if status == "failed":
                    report.failed.append((file, payload))
                    bar.write(f"textsam: failed on {file}: {payload}", file=sys.stderr)
                else:
                    record = json.loads(payload)
                    store.write(key, record)
                    if status == "skipped":
                        report.skipped.append((file, record["skipped"]))
                        bar.write(f"textsam: skipped {file}: {record['skipped']}", file=sys.stderr)
                    else:
                        report.labelled += 1
                bar.update(1)
        except (KeyboardInterrupt, TextSamError):
            raise
        except Exception as err:  # a Ray error: report the textsam error it wraps, if any, as the local run would
            cause = _textsam_cause(err)
            if cause is not None:
                raise cause from None
            raise
        finally:
            bar.close()
    finally:
        if started:
            ray.shutdown()
    return report

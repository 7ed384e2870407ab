"""Reliability battery, ``textsam train``: every bad config, bad data, bad checkpoint and reused output folder
gets exit 2 and one line saying what to do, and nothing of an earlier run is lost.

Each case builds its inputs in its own folder (a config from the base below, a copy of the synthetic data, a
copy of an earlier run) and runs ``textsam train`` in this process (``harness.run_cli``). Runs that train use
``tiny_train`` (tests/tiny_train.py) on 6 synthetic images with a 2-layer CLIP, a few steps (about a second each).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from ..tiny_train import tiny_train_model  # noqa: F401 (a fixture)
from .harness import check, run_cli, snapshot

# the base config; "table.key" entries go under [table]
BASE = {
    "model": '"tiny_train"', "recipe": '"text"', "batch_size": "2", "steps": "3", "optim.warmup_steps": "1",
    "optim.lr": "1e-3", "progress": "false", "text_head.projector_hidden_dim": "64", "loss.correction_clicks": "1",
    "log_every": "1", "checkpoint_every": "1", "keep_checkpoints": "3", "deterministic": "true",
}
pytestmark = pytest.mark.usefixtures("tiny_train_model")


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from textsam.data import synthetic

    root = tmp_path_factory.mktemp("train_battery") / "data"
    synthetic.generate(root, seed=0, num_train=6, num_val=2, num_test=0)
    return root


class Ctx:
    """One case's folder: ``config()`` writes a config, ``data_copy()`` a data copy to spoil, ``argv`` the
    command (``train CONFIG --out RUN``)."""

    def __init__(self, folder: Path, data: Path, clip: str, runs: dict[str, Path]) -> None:
        self.folder, self.data, self.clip, self.runs = folder, data, clip, runs
        self.out = folder / "run"

    def config(self, keys: dict[str, str] | None = None, *, data: Path | None = None, extra: str = "",
               data_extra: str = "", name: str = "run.toml") -> Path:
        values = dict(BASE, clip=json.dumps(self.clip), **(keys or {}))
        lines = [f"{k} = {v}" for k, v in values.items() if v is not None and "." not in k]
        tables: dict[str, list[str]] = {}
        for k, v in values.items():
            if v is not None and "." in k:
                table, key = k.split(".", 1)
                tables.setdefault(table, []).append(f"{key} = {v}")
        text = "\n".join(lines) + f"\n{extra}\n" + "".join(f"[{t}]\n" + "\n".join(ls) + "\n"
                                                            for t, ls in tables.items())
        text += f"[data]\nroot = {json.dumps(str(data or self.data))}\n"
        text += f"eval_samples = 2\n{data_extra}"
        path = self.folder / name
        path.write_text(text)
        return path

    def data_copy(self, spoil: Callable[[Path], None]) -> Path:
        root = self.folder / "data"
        shutil.copytree(self.data, root)
        spoil(root)
        return root

    def earlier_run(self, kind: str) -> Path:
        """A copy of an earlier run in ``self.out``: "finished" (3 of 3 steps) or "stopped" (at step 2)."""
        shutil.copytree(self.runs[kind], self.out)
        return self.out

    def argv(self, config: Path, *args: str) -> list[str]:
        return ["train", str(config), "--out", str(self.out), *args]


@pytest.fixture(scope="module")
def runs(data: Path, clip_spec: str, tmp_path_factory: pytest.TempPathFactory,
         tiny_train_model: str) -> dict[str, Path]:  # noqa: F811 (the fixture imported above)
    """A finished run and one stopped at step 2 (each case works on a copy)."""
    folder = tmp_path_factory.mktemp("train_battery_runs")
    ctx = Ctx(folder, data, clip_spec, {})
    cfg = ctx.config()
    made = {}
    for kind, args in (("finished", ()), ("stopped", ("--stop-at", "2"))):
        out = folder / kind
        torch.set_num_threads(1)
        assert run_cli(["train", str(cfg), "--out", str(out), *args]).rc == 0
        made[kind] = out
    return made


def _json_edit(rel: str, edit: Callable[[object], object]) -> Callable[[Path], None]:
    def spoil(root: Path) -> None:
        path = root / rel
        path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    return spoil


def _set(obj: object, key: str, value: object) -> object:
    obj[key] = value  # type: ignore[index]
    return obj


def _first_ann(obj: dict, key: str, value: object) -> dict:
    obj["annotations"][0][key] = value
    return obj


def _first_image_gone(root: Path) -> None:
    next(iter(sorted((root / "train" / "images").iterdir()))).unlink()


def _write(rel: str, content: bytes) -> Callable[[Path], None]:
    def spoil(root: Path) -> None:
        (root / rel).write_bytes(content)
    return spoil


def _spoil_latest(how: str) -> Callable[[Path], Path]:
    """Spoil the latest checkpoint of a run copy; return it."""
    def spoil(run: Path) -> Path:
        path = sorted((run / "checkpoints").glob("step_*.pt"))[-1]
        if how == "truncated":
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
        elif how == "random":
            path.write_bytes(bytes(range(256)) * 20)
        elif how == "empty":
            path.write_bytes(b"")
        elif how == "unsafe":
            torch.save({"format": "textsam.train_state", "step": 3, "payload": _Payload(run / "it_ran")}, path)
        elif how == "not_a_checkpoint":
            torch.save({"weights": torch.zeros(2)}, path)
        return path
    return spoil


class _Payload:
    """Unpickling it would create ``marker``: a safe load must refuse it without running it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (Path.touch, (self.marker,))


def _write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@dataclass(frozen=True)
class Case:
    id: str
    argv: Callable[[Ctx], list[str]]  # builds the inputs in the case's folder, returns the command
    rc: int = 2
    words: tuple[str, ...] = ()
    may_change_run: bool = False  # the run folder is an output the case may change (a resumed run)


def _cfg(keys: dict[str, str] | None = None, *args: str, **kw: object) -> Callable[[Ctx], list[str]]:
    return lambda c: c.argv(c.config(keys, **kw), *args)  # type: ignore[arg-type]


def _data(spoil: Callable[[Path], None], keys: dict[str, str] | None = None) -> Callable[[Ctx], list[str]]:
    return lambda c: c.argv(c.config(keys, data=c.data_copy(spoil)))


def _on_run(kind: str, *args: str, spoil: Callable[[Path], Path] | None = None,
            keys: dict[str, str] | None = None) -> Callable[[Ctx], list[str]]:
    def build(c: Ctx) -> list[str]:
        run = c.earlier_run(kind)
        spoiled = spoil(run) if spoil else None
        return c.argv(c.config(keys), *[str(spoiled) if a == "SPOILED" else a for a in args])
    return build


CASES = [
    # ------------------------------------------------------------------ config files
    Case("config-missing", lambda c: c.argv(c.folder / "nope.toml"), words=("not found", "nope.toml")),
    Case("toml-malformed", _cfg(extra="steps = 3 3"), words=("not valid TOML", "fix line", "steps = 3 3")),
    Case("json-malformed", lambda c: c.argv(_write_text(c.folder / "run.json", '{"steps": 3,\n "lr": }')),
         words=("not valid JSON", "line 2")),
    Case("config-not-utf8", lambda c: c.argv(_write_bytes(c.folder / "run.toml", b"steps = \xff\xfe\n")),
         words=("not UTF-8",)),
    Case("unknown-key", _cfg(extra="stepz = 3"), words=("unknown key 'stepz'", "did you mean 'steps'")),
    Case("unknown-key-in-data", _cfg(data_extra="rot = 'x'\n"), words=("'rot' in [data]", "did you mean 'root'")),
    Case("data-key-at-top-level", _cfg(extra='images = "x"'), words=("'images' belongs in the [data] table",)),
    Case("steps-a-word", _cfg({"steps": '"sixty"'}), words=("steps must be a whole number", '"sixty"')),
    Case("steps-a-fraction", _cfg({"steps": "2.5"}), words=("steps must be a whole number", "2.5")),
    Case("steps-zero", _cfg({"steps": "0"}), words=("steps must be a whole number >= 1", "got 0")),
    Case("steps-negative", _cfg({"steps": "-4"}), words=("steps", ">= 1", "-4")),
    Case("batch-size-zero", _cfg({"batch_size": "0"}), words=("batch_size", ">= 1")),
    Case("batch-size-bool", _cfg({"batch_size": "true"}), words=("batch_size must be a whole number",)),
    Case("lr-negative", _cfg({"optim.lr": "-1e-3"}), words=("[optim] lr must be a positive learning rate", "-0.001")),
    Case("lr-zero", _cfg({"optim.lr": "0"}), words=("[optim] lr must be a positive learning rate",)),
    Case("lr-a-word", _cfg({"optim.lr": '"fast"'}), words=("[optim] lr must be a number",)),
    Case("lr-at-top-level", _cfg({"optim.lr": None}, extra="lr = 1e-3"), words=("lr moved to [optim] lr",)),
    Case("cache-dir-at-top-level", _cfg(extra='cache_dir = "c"'), words=("cache_dir moved to [cache] dir",)),
    Case("locator-kind", _cfg(extra='locator_kind = "cells"'), words=("locator_kind was removed",)),
    Case("key-in-the-wrong-table", _cfg(extra="[augment]\nfocal_weight = 2"),
         words=("focal_weight moved to [loss] focal_weight",)),
    Case("progress-a-word", _cfg({"progress": '"no"'}), words=("progress must be true or false",)),
    Case("freeze-not-a-table", _cfg(extra="freeze = 3"), words=("[freeze] must be a table",)),
    Case("prompt-mix-negative", _cfg(extra="[prompt_mix]\ntext = -1"), words=("[prompt_mix] text", ">= 0")),
    Case("unknown-model", _cfg({"model": '"sam_vit_z"'}), words=("unknown model 'sam_vit_z'", "use one of")),
    Case("unknown-recipe", _cfg({"recipe": '"magic"'}), words=("recipe must be one of",)),
    Case("steps-flag-zero", _cfg(None, "--steps", "0"), words=("steps", ">= 1")),
    Case("stop-at-past-steps", _cfg(None, "--stop-at", "9"), words=("--stop-at", "between 1 and steps (3)")),
    Case("stop-at-zero", _cfg(None, "--stop-at", "0"), words=("--stop-at",)),
    Case("device-not-a-device", _cfg(None, "--device", "gpu"), words=("unknown device 'gpu'", "cpu")),
    Case("device-cuda-missing", _cfg(None, "--device", "cuda"), words=("no cuda device", "--device cpu")),
    Case("device-in-config", _cfg({"device": '"cuda:0"'}), words=("no cuda device",)),
    # ------------------------------------------------------------------ data
    Case("data-root-missing", lambda c: c.argv(c.config(data=c.folder / "no_data")),
         words=("data folder", "does not exist", "[data] root")),
    Case("val-split-missing", _data(lambda root: shutil.rmtree(root / "val")),
         words=("val annotations", "do not exist", 'val_split = ""')),
    Case("images-folder-missing", _data(lambda root: shutil.rmtree(root / "train" / "images")),
         words=("image folder", "does not exist", "[data]")),
    Case("instances-malformed-json", _data(_write("train/instances.json", b'{"images": [')),
         words=("instances.json", "not a valid JSON")),
    Case("instances-not-coco", _data(_write("train/instances.json", b'{"pictures": []}')),
         words=("instances.json", "images, annotations, categories")),
    Case("instances-bad-bbox", _data(_json_edit("train/instances.json", lambda d: _first_ann(d, "bbox", "wide"))),
         words=("instances.json",)),
    Case("instances-unknown-image", _data(_json_edit("train/instances.json",
                                                     lambda d: _first_ann(d, "image_id", 999))),
         words=("instances.json", "image 999")),
    Case("refs-malformed-json", _data(_write("train/refs.json", b"[{")), words=("refs.json", "not a valid JSON")),
    Case("refs-sentences-not-a-list", _data(_json_edit("train/refs.json", lambda d: [_set(d[0], "sentences", 5)])),
         words=("refs.json", "'sentences' must be a list")),
    Case("refs-missing-for-text-recipe", _data(lambda root: (root / "train" / "refs.json").unlink()),
         words=("text recipe needs referring expressions", "refs.json")),
    Case("image-missing", _data(_first_image_gone), words=("1 of the 6 images", "missing", "train/images")),
    # ------------------------------------------------------------------ an earlier run in the output folder
    Case("finished-run-without-resume", _on_run("finished"),
         words=("already holds a training run", "--resume auto", "--out", "--overwrite")),
    Case("stopped-run-without-resume", _on_run("stopped"),
         words=("already holds a training run", "step 2", "--resume auto")),
    Case("stopped-run-other-config", _on_run("stopped", keys={"optim.lr": "5e-4"}),
         words=("already holds a training run",)),
    Case("resume-auto-and-overwrite", _on_run("stopped", "--resume", "auto", "--overwrite"),
         words=("only one",)),
    Case("resume-auto-finished-run", _on_run("finished", "--resume", "auto"), rc=0),
    Case("resume-auto-steps-below-the-run", _on_run("finished", "--resume", "auto", "--steps", "2"),
         words=("step 3", "past steps = 2")),
    Case("resume-auto-stop-at-done-step", _on_run("stopped", "--resume", "auto", "--stop-at", "2"),
         words=("already at step 2", "--stop-at")),
    Case("resume-other-batch-size", _on_run("stopped", "--resume", "auto", keys={"batch_size": "4"}),
         words=("batch_size = 2", "the same")),
    Case("resume-missing-file", _on_run("stopped", "--resume", "nope.pt"), words=("no checkpoint at nope.pt",)),
    Case("resume-earlier-checkpoint-in-run", _on_run("finished", "--resume", "SPOILED",
                                                     spoil=lambda run: run / "checkpoints" / "step_0000002.pt"),
         words=("checkpoints after step 2", "mix two histories", "--resume auto")),
    Case("resume-auto-truncated-latest", _on_run("stopped", "--resume", "auto", spoil=_spoil_latest("truncated")),
         rc=0, may_change_run=True),
] + [
    Case(f"resume-named-{how}", _on_run("stopped", "--resume", "SPOILED", spoil=_spoil_latest(how)),
         words=("--resume", "step_0000002.pt", why))
    for how, why in (("truncated", "truncated or corrupt"), ("random", "not a checkpoint"), ("empty", "empty"),
                     ("unsafe", "could run code"), ("not_a_checkpoint", "not a textsam training checkpoint"))
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_train_case(case: Case, data: Path, clip_spec: str, runs: dict[str, Path], tmp_path: Path,
                    caplog: pytest.LogCaptureFixture) -> None:
    if case.id in ("device-cuda-missing", "device-in-config") and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    ctx = Ctx(tmp_path, data, clip_spec, runs)
    argv = case.argv(ctx)
    before = snapshot(tmp_path)
    mtimes = {p: p.stat().st_mtime_ns for p in before}
    had_run = ctx.out.exists()
    with caplog.at_level("WARNING"):
        outcome = run_cli(argv)
    may_change = [p for p in before if ctx.out in p.parents] if case.may_change_run else []

    def extra() -> None:
        logs = caplog.text
        assert "weights_only" not in outcome.text + logs  # never suggest turning the safe load off
        assert not (ctx.out / "it_ran").exists()  # the unsafe pickle never ran
        if case.rc == 2:
            assert ctx.out.exists() == had_run, "a refused run must not create its output folder"
        if not case.may_change_run:  # not even a fresh timestamp
            assert mtimes == {p: p.stat().st_mtime_ns for p in before}
        if case.id == "resume-auto-finished-run":
            assert "nothing to do" in logs
        if case.id == "resume-auto-truncated-latest":
            assert "skipping the checkpoint" in logs and "step_0000002.pt" in logs
            assert (ctx.out / "checkpoints" / "step_0000002.pt.corrupt").is_file()
            assert [json.loads(ln)["step"] for ln in (ctx.out / "log.jsonl").read_text().splitlines()] == [1, 2, 3, 3]

    check(f"train:{case.id}", outcome, rc=case.rc, words=case.words, before=before, may_change=may_change,
          extra=extra)

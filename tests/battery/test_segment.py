"""Battery: ``textsam segment`` with bad and awkward input, as a new user would try it (bundled shapes_tiny).

Each case: how the working folder is set up, the command line, the exit code and the words of the message
expected, and what else must hold (files written, files left alone). The harness checks every case for
tracebacks, "unexpected" errors, one-line user errors and files lost or overwritten (see harness.py).
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from . import files
from .harness import check, run_cli, snapshot

MODEL = ["--model", "shapes_tiny", "--no-progress"]


@pytest.fixture(autouse=True)
def _one_model_per_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bundled model is built once for the whole battery (each command still makes its own predictor);
    every other model (checkpoints, unknown names, devices) goes through create_model as usual."""
    import textsam

    real = textsam.create_model

    def create_model(name: str, **kwargs):
        if name == "shapes_tiny" and not any(kwargs.get(k) for k in ("checkpoint", "clip", "text_head", "device")):
            if "shapes_tiny" not in _MODELS:
                _MODELS["shapes_tiny"] = real(name)
            return _MODELS["shapes_tiny"]
        return real(name, **kwargs)

    monkeypatch.setattr(textsam, "create_model", create_model)


_MODELS: dict = {}


@dataclass(frozen=True)
class Case:
    """One command. ``setup(tmp)`` makes the inputs and returns the argv (``{out}`` = tmp/out)."""

    id: str
    setup: Callable[[Path], list[str]]
    rc: int
    words: tuple[str, ...] = ()
    may_change: Callable[[Path], list[Path]] = field(default=lambda tmp: [])
    after: Callable[[Path], None] | None = None


def _one(kind: str, *extra: str) -> Callable[[Path], list[str]]:
    def setup(tmp: Path) -> list[str]:
        path = files.write(kind, tmp / "in")
        return ["segment", str(path), *extra, "-o", str(tmp / "out"), *MODEL]
    return setup


def _good(*extra: str) -> Callable[[Path], list[str]]:
    return _one("good_png", *extra)


def _written(*names: str) -> Callable[[Path], None]:
    def after(tmp: Path) -> None:
        for name in names:
            assert (tmp / "out" / name).is_file(), f"{name} was not written"
    return after


def _json_of(tmp: Path, stem: str) -> dict:
    return json.loads((tmp / "out" / f"{stem}.json").read_text())


# ------------------------------------------------------------------------------------------ setups
def _mixed_folder(tmp: Path) -> list[str]:
    folder = tmp / "in"
    for kind in ("good_png", "webp", "zero_byte", "text_as_png", "bomb_png"):
        files.write(kind, folder)
    return ["segment", str(folder), "--point", "20,30", "-o", str(tmp / "out"), *MODEL]


def _mixed_after(tmp: Path) -> None:
    _written("good.json", "good_overlay.png", "photo.json")(tmp)
    assert not (tmp / "out" / "empty.json").exists() and not (tmp / "out" / "bomb.json").exists()


def _out_is_file(tmp: Path) -> list[str]:
    img = files.write("good_png", tmp / "in")
    (tmp / "out").write_text("my notes")
    return ["segment", str(img), "--point", "0,0", "-o", str(tmp / "out"), *MODEL]


def _out_unwritable(tmp: Path) -> list[str]:
    img = files.write("good_png", tmp / "in")
    (tmp / "plain.txt").write_text("a file, so nothing can be created under it")
    return ["segment", str(img), "-t", "red circle", "-o", str(tmp / "plain.txt" / "out"), *MODEL]


def _foreign_overlay(tmp: Path) -> list[str]:
    img = files.write("good_png", tmp / "in")
    (tmp / "out").mkdir()
    files.good_png(tmp / "out" / "good_overlay.png", (40, 30))  # the user's own picture with that name
    (tmp / "out" / "good.json").write_text('{"mine": true}')
    return ["segment", str(img), "-t", "red circle", "-o", str(tmp / "out"), *MODEL]


def _nothing_new(tmp: Path) -> None:
    assert sorted(p.name for p in (tmp / "out").iterdir()) == ["good.json", "good_overlay.png"]


def _same_folder(tmp: Path) -> list[str]:
    folder = tmp / "in"
    files.write("good_png", folder)
    files.good_png(folder / "good_overlay.png", (50, 40))  # the user's own picture, named like an output
    argv = ["segment", str(folder), "--point", "5,5", "-o", str(folder), *MODEL]
    before = snapshot(folder)
    assert run_cli(argv).rc == 2  # refused: good.png's overlay would replace the user's good_overlay.png
    assert snapshot(folder) == before
    (folder / "good_overlay.png").rename(folder / "holiday.png")
    assert run_cli(argv).rc == 0
    return argv  # the rerun: nothing new to do, its own outputs are not segmented as images


def _same_folder_after(tmp: Path) -> None:
    names = sorted(p.name for p in (tmp / "in").iterdir())
    assert names == ["good.json", "good.png", "good_mask0.png", "good_overlay.png", "holiday.json", "holiday.png",
                     "holiday_mask0.png", "holiday_overlay.png"], names


def _fewer_masks(tmp: Path) -> list[str]:
    img = files.write("good_png", tmp / "in")
    assert run_cli(["segment", str(img), "--point", "20,30", "--multimask", "-o", str(tmp / "out"), *MODEL]).rc == 0
    assert (tmp / "out" / "good_mask2.png").is_file()
    return ["segment", str(img), "--point", "20,30", "-o", str(tmp / "out"), *MODEL]


def _fewer_after(tmp: Path) -> None:
    names = sorted(p.name for p in (tmp / "out").iterdir())
    assert names == ["good.json", "good_mask0.png", "good_overlay.png"], names
    assert [r["mask_file"] for r in _json_of(tmp, "good")["results"]] == ["good_mask0.png"]


def _killed_leftovers(tmp: Path) -> list[str]:
    """The state SIGKILL can leave: a finished image, one whose masks exist but not its JSON, a temp file."""
    folder = tmp / "in"
    files.write("good_png", folder)
    files.write("webp", folder)
    argv = ["segment", str(folder), "--point", "20,30", "-o", str(tmp / "out"), *MODEL]
    assert run_cli(argv).rc == 0
    (tmp / "out" / "photo.json").unlink()
    (tmp / "out" / ".photo_overlay.png.0123abcd.tmp").write_bytes(b"half a png")
    return argv


def _leftovers_after(tmp: Path) -> None:
    names = sorted(p.name for p in (tmp / "out").iterdir())
    assert names == ["good.json", "good_mask0.png", "good_overlay.png", "photo.json", "photo_mask0.png",
                     "photo_overlay.png"], names


def _checkpoint(kind: str) -> Callable[[Path], list[str]]:
    def setup(tmp: Path) -> list[str]:
        img = files.write("good_png", tmp / "in")
        ckpt = tmp / "weights.pth"
        if kind == "random":
            ckpt.write_bytes(np.random.default_rng(0).bytes(4096))
        elif kind == "html":
            ckpt.write_text("<!DOCTYPE html><html><head><title>Sign in</title></head></html>")
        elif kind == "truncated":
            torch.save({"w": torch.zeros(1000)}, ckpt)
            ckpt.write_bytes(ckpt.read_bytes()[:300])
        elif kind == "other_arch":
            torch.save({"conv1.weight": torch.zeros(8, 3, 3, 3), "fc.weight": torch.zeros(10, 8)}, ckpt)
        elif kind == "pickle_code":
            ckpt.write_bytes(pickle.dumps(_Exploit(str(tmp / "pwned"))))
        return ["segment", str(img), "-t", "red circle", "--model", "sam_vit_b", "--checkpoint", str(ckpt),
                "-o", str(tmp / "out"), "--no-progress"]
    return setup


class _Exploit:
    """Unpickling this would create a file: a checkpoint must never be able to run code."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):  # noqa: D105
        return (Path.touch, (Path(self.path),))


def _not_pwned(tmp: Path) -> None:
    assert not (tmp / "pwned").exists(), "loading the checkpoint ran code"


def _no_outputs(tmp: Path) -> None:
    assert not (tmp / "out").exists() or not any((tmp / "out").iterdir())


def _exif_after(tmp: Path) -> None:
    doc = _json_of(tmp, "rotated")
    assert (doc["image"]["width"], doc["image"]["height"]) == (72, 96)  # shown upright: rotated 90 degrees


def _metachar_after(tmp: Path) -> None:
    assert not (tmp / "x").exists() and not Path("x").exists()
    assert _json_of(tmp, "good")["prompt"]["text"].startswith("$(touch")


LONG = " ".join(["the small red circle next to the big blue square"] * 50)

CASES = [
    Case("missing-file", lambda t: ["segment", str(t / "nope.jpg"), "-t", "x", "-o", str(t / "out"), *MODEL], 2,
         ("not found", "nope.jpg")),
    Case("zero-byte", _one("zero_byte", "--point", "0,0"), 2, ("empty (0 bytes)",)),
    Case("truncated-png", _one("truncated_png", "--point", "0,0"), 2, ("cannot read", "truncated")),
    Case("truncated-jpeg", _one("truncated_jpeg", "--point", "0,0"), 2, ("cannot read", "truncated")),
    Case("text-named-png", _one("text_as_png", "--point", "0,0"), 2, ("cannot read", "notes.png")),
    Case("html-named-jpg", _one("html_as_jpg", "--point", "0,0"), 2, ("cannot read", "page.jpg")),
    Case("bomb-30000x30000", _one("bomb_png", "--point", "0,0"), 2, ("decompression bomb", "900 megapixels")),
    Case("150-megapixels", _one("big_150mp_png", "--point", "0,0"), 2, ("150.0 megapixels", "downscale")),
    Case("fifo-named-png", _one("fifo", "--point", "0,0"), 2, ("not a regular file",)),
    Case("sixteen-bit", _one("sixteen_bit_png", "--point", "0,0"), 0, after=_written("depth16.json")),
    Case("cmyk-jpeg", _one("cmyk_jpeg", "--point", "0,0"), 0, after=_written("cmyk.json")),
    Case("palette-transparency", _one("palette_transparent_png", "--point", "0,0"), 0,
         after=_written("palette.json")),
    Case("grayscale", _one("grayscale_png", "--point", "0,0"), 0, after=_written("grey.json")),
    Case("exif-rotated", _one("exif_rotated_jpeg", "--point", "0,0"), 0, after=_exif_after),
    Case("animated-gif", _one("animated_gif", "--point", "0,0"), 0, after=_written("anim.json")),
    Case("webp", _one("webp", "--point", "0,0"), 0, after=_written("photo.json", "photo_mask0.png")),
    Case("tiff", _one("tiff", "--point", "0,0"), 0, after=_written("photo.json")),
    Case("one-pixel", _one("one_pixel", "--point", "0,0"), 0, after=_written("dot.json")),
    Case("rgba", _one("rgba_png", "--point", "20,30"), 0, after=_written("alpha.json")),
    Case("folder-good-and-bad", _mixed_folder, 2,
         ("3 of 5 image(s) could not be read", "empty.png", "notes.png", "bomb.png"), after=_mixed_after),
    Case("folder-without-images", lambda t: (t / "in").mkdir() or ["segment", str(t / "in"), "-t", "x", "-o",
                                                                    str(t / "out"), *MODEL], 2, ("no images found",)),
    Case("no-inputs", lambda t: ["segment", "-t", "x", "-o", str(t / "out"), *MODEL], 2, ("give the images",)),
    Case("empty-phrase", _good("-t", ""), 2, ("--text is empty",)),
    Case("whitespace-phrase", _good("-t", "   \t "), 2, ("--text is empty",)),
    Case("empty-negative-phrase", _good("-t", "red circle", "--negative-text", " "), 2, ("--negative-text is empty",)),
    Case("over-long-phrase", _good("-t", LONG), 0, after=_written("good.json")),
    Case("non-ascii-phrase", _good("-t", "círculo rojo ✓ 赤い円 🔴"), 0, after=_written("good.json")),
    Case("shell-metacharacters", _good("-t", "$(touch x); `touch x` && echo | > x 'red' \"circle\""), 0,
         after=_metachar_after),
    Case("no-prompt", _good(), 2, ("give a prompt",)),
    Case("point-outside", _good("--point", "500,20"), 2, ("outside", "96x72")),
    Case("point-negative", _good("--point=-3,20"), 2, ("outside",)),
    Case("point-nan", _good("--point", "nan,20"), 2, ("expected x,y",)),
    Case("point-malformed", _good("--point", "10;20"), 2, ("expected x,y",)),
    Case("point-bad-label", _good("--point", "10,20,7"), 2, ("label",)),
    Case("box-inverted", _good("--box", "60,50,10,10"), 2, ("x1 > x0",)),
    Case("box-malformed", _good("--box", "1,2,3"), 2, ("expected x0,y0,x1,y1",)),
    Case("box-outside", _good("--box", "10,10,300,60"), 2, ("outside",)),
    Case("box-infinite", _good("--box", "0,0,inf,10"), 2, ("expected x0,y0,x1,y1",)),
    Case("output-is-a-file", _out_is_file, 2, ("is a file",)),
    Case("output-not-writable", _out_unwritable, 2, ("cannot write to the output folder",)),
    Case("output-holds-users-files", _foreign_overlay, 2, ("did not write", "good_overlay.png", "good.json"),
         after=_nothing_new),
    Case("output-is-input-folder", _same_folder, 0, ("already done",), after=_same_folder_after),
    Case("rerun-with-fewer-masks", _fewer_masks, 0, may_change=lambda t: list((t / "out").iterdir()),
         after=_fewer_after),
    Case("rerun-after-kill", _killed_leftovers, 0, ("1 of 2 image(s) already done",),
         may_change=lambda t: list((t / "out").iterdir()), after=_leftovers_after),
    Case("all-instances", _good("-t", "red circle", "--all"), 0, after=_written("good.json", "good_mask0.png")),
    Case("example", lambda t: ["segment", "--example", "-t", "red circle", "-o", str(t / "out"), "--no-progress"], 0,
         after=_written("shapes.json", "shapes_mask0.png")),
    Case("unknown-model", lambda t: ["segment", str(files.write("good_png", t / "in")), "-t", "x", "--model",
                                     "sam_vit_z", "-o", str(t / "out")], 2, ("unknown model", "sam_vit_b")),
    Case("checkpoint-random-bytes", _checkpoint("random"), 2, ("cannot read",), after=_no_outputs),
    Case("checkpoint-html-page", _checkpoint("html"), 2, ("html",), after=_no_outputs),
    Case("checkpoint-truncated", _checkpoint("truncated"), 2, ("truncated",), after=_no_outputs),
    Case("checkpoint-other-architecture", _checkpoint("other_arch"), 2, ("checkpoint",), after=_no_outputs),
    Case("checkpoint-runs-code", _checkpoint("pickle_code"), 2, ("python objects",), after=_not_pwned),
    Case("checkpoint-missing", lambda t: ["segment", str(files.write("good_png", t / "in")), "-t", "x",
                                          "--checkpoint", str(t / "none.pth"), "-o", str(t / "out")], 2,
         ("not found",)),
    Case("text-head-missing", _good("-t", "x", "--text-head", "/nonexistent/head.safetensors"), 2, ("not found",)),
    Case("clip-malformed", _good("-t", "x", "--clip", "ViT-B-16"), 2, ("name/tag", "name/@/file", "local-dir:")),
    # the forms the no-network message tells users to give: a file or folder that is not there says so
    Case("clip-file-missing", _good("-t", "x", "--clip", "ViT-B-16/@//nonexistent/open_clip_model.safetensors"), 2,
         ("no clip weights file", "/nonexistent/open_clip_model.safetensors")),
    Case("clip-folder-not-open-clip", lambda t: ["segment", str(files.write("good_png", t / "in")), "-t", "x",
                                                 "--clip", f"local-dir:{t / 'in'}", "-o", str(t / "out")], 2,
         ("no open_clip folder", "open_clip_config.json")),
    Case("device-cuda", _good("-t", "x", "--device", "cuda"), 2, ("no cuda device", "--device cpu")),
    Case("device-mps", _good("-t", "x", "--device", "mps"), 2, ("mps", "--device cpu")),
    Case("device-unknown", _good("-t", "x", "--device", "tpu"), 2, ("unknown device",)),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_segment(case: Case, tmp_path: Path) -> None:
    argv = case.setup(tmp_path)
    before, may_change = snapshot(tmp_path), case.may_change(tmp_path)
    outcome = run_cli(argv)
    check(f"segment/{case.id}", outcome, rc=case.rc, words=case.words, before=before, may_change=may_change,
          extra=None if case.after is None else lambda: case.after(tmp_path))


def test_outputs_have_the_usual_permissions(tmp_path: Path) -> None:
    import os

    old = os.umask(0o022)
    try:
        argv = _good("-t", "red circle")(tmp_path)
        assert run_cli(argv).rc == 0
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "out").iterdir()}
    assert set(modes.values()) == {0o644}, modes


def test_images_inside_the_output_folder_that_are_ours_are_marked(tmp_path: Path) -> None:
    from textsam.results import is_own_output

    argv = _good("-t", "red circle")(tmp_path)
    assert run_cli(argv).rc == 0
    out = tmp_path / "out"
    assert all(is_own_output(p) for p in out.iterdir())
    assert not is_own_output(files.good_png(tmp_path / "mine.png"))
    with Image.open(out / "good_mask0.png") as im:
        assert im.mode == "L" and set(np.unique(np.asarray(im))) <= {0, 255}

"""Battery: ``textsam export`` with damaged, foreign and dangerous checkpoints and bad output paths.

Each case: how the working folder is set up, the command line, the exit code and the words expected (and
words that must never appear: torch's advice to load with ``weights_only=False``, "pickled" for a file that
is no pickle). The harness checks every case for tracebacks, "unexpected" errors, one-line user errors and
files lost or overwritten (see harness.py).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from .harness import check, run_cli, snapshot

pytest.importorskip("onnx")


def _output(tmp: Path) -> Path:
    return tmp / "decoder.onnx"


class _Marker:
    """Unpickling this would create ``path`` (a folder): loading a checkpoint must never run code."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):  # noqa: D105
        return (os.mkdir, (self.path,))


def _write_checkpoint(kind: str, path: Path, tmp: Path) -> None:
    if kind == "random-bytes":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "zero-byte":
        path.write_bytes(b"")
    elif kind == "html-page":
        path.write_text("<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>403</body></html>\n")
    elif kind == "truncated":
        torch.save({"image_encoder.pos_embed": torch.zeros(1, 8, 8, 16), "x": torch.zeros(4000)}, path)
        path.write_bytes(path.read_bytes()[:1500])
    elif kind == "vit-b-shaped":  # the leading tensors of an official ViT-B file
        sd = {"image_encoder.patch_embed.proj.weight": torch.zeros(768, 3, 16, 16),
              "image_encoder.pos_embed": torch.zeros(1, 64, 64, 768)}
        sd.update({f"image_encoder.blocks.{i}.norm1.weight": torch.ones(768) for i in range(12)})
        torch.save(sd, path)
    elif kind == "resnet":
        torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "bn1.weight": torch.ones(64),
                    "fc.weight": torch.zeros(1000, 512)}, path)
    elif kind == "code-zip":
        torch.save({"w": torch.zeros(2), "payload": _Marker(tmp / "ran")}, path)
    elif kind == "code-legacy":
        torch.save({"w": torch.zeros(2), "payload": _Marker(tmp / "ran")}, path, _use_new_zipfile_serialization=False)
    elif kind == "code-pickle":
        path.write_bytes(pickle.dumps(_Marker(tmp / "ran"), protocol=4))
    elif kind == "git-lfs-pointer":
        path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 375042383\n")
    else:
        raise KeyError(kind)


@dataclass(frozen=True)
class Case:
    """``setup(tmp)`` makes the inputs and returns the argv."""

    id: str
    setup: Callable[[Path], list[str]]
    rc: int
    words: tuple[str, ...] = ()
    absent: tuple[str, ...] = ("weights_only", "set to `false`")
    may_change: Callable[[Path], list[Path]] = field(default=lambda tmp: [])
    after: Callable[[Path], None] | None = None


def _checkpoint(kind: str, model: str = "shapes_tiny") -> Callable[[Path], list[str]]:
    def setup(tmp: Path) -> list[str]:
        ckpt = tmp / "weights.pth"
        _write_checkpoint(kind, ckpt, tmp)
        return ["export", "--model", model, "--checkpoint", str(ckpt), "-o", str(_output(tmp))]
    return setup


def _nothing_written(tmp: Path) -> None:
    assert not _output(tmp).exists(), "an output was written"
    assert not (tmp / "ran").exists(), "loading the checkpoint ran code"
    assert not [p for p in tmp.rglob("*") if p.name.endswith(".part")], "a temporary file was left"


def _export_to(make: Callable[[Path], Path]) -> Callable[[Path], list[str]]:
    def setup(tmp: Path) -> list[str]:
        return ["export", "--model", "shapes_tiny", "-o", str(make(tmp))]
    return setup


def _folder(tmp: Path) -> Path:
    (tmp / "models").mkdir()
    (tmp / "models" / "keep.txt").write_text("mine")
    return tmp / "models"


def _under_a_file(tmp: Path) -> Path:
    (tmp / "notes.txt").write_text("mine")
    return tmp / "notes.txt" / "decoder.onnx"


def unwritable_folder(tmp: Path) -> Path:
    """A folder this user cannot write into: a read-only one, or (root ignores permissions) /sys/fs."""
    ro = tmp / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    for folder in (ro, Path("/sys/fs")):
        try:
            (folder / ".probe").open("wb").close()
        except OSError:
            return folder
        (folder / ".probe").unlink()
    pytest.skip("no folder here refuses writes to this user")


def _read_only_folder(tmp: Path) -> Path:
    return unwritable_folder(tmp) / "decoder.onnx"


def _existing_output(tmp: Path) -> Path:
    _output(tmp).write_bytes(b"an older export")
    return _output(tmp)


def _written(tmp: Path) -> None:
    out = _output(tmp)
    assert out.stat().st_size > 100_000 and out.read_bytes()[:2] != b"an"
    assert sorted(p.name for p in tmp.iterdir()) == ["decoder.onnx"]  # no temporary file left


def _device_case(tmp: Path) -> list[str]:
    if "--device" not in run_cli(["export", "--help"]).out:
        pytest.skip("textsam export has no --device option")
    return ["export", "--model", "shapes_tiny", "--device", "cuda", "-o", str(_output(tmp))]


def _sam_only(*extra: str) -> Callable[[Path], list[str]]:
    """shapes_tiny's SAM weights alone (an official-format file: no text head)."""

    def setup(tmp: Path) -> list[str]:
        import textsam

        model = textsam.create_model("shapes_tiny")
        sd = {k: v for k, v in model.state_dict().items()
              if k.startswith(("image_encoder.", "prompt_encoder.", "mask_decoder."))}
        torch.save(sd, tmp / "sam_only.pth")
        return ["export", "--model", "shapes_tiny", "--checkpoint", str(tmp / "sam_only.pth"), *extra,
                "-o", str(_output(tmp))]
    return setup


CASES = [
    Case("checkpoint-random-bytes", _checkpoint("random-bytes"), 2,
         ("cannot read", "weights.pth", "neither a zip archive nor a pickle"),
         absent=("weights_only", "pickled", "python objects"), after=_nothing_written),
    Case("checkpoint-zero-byte", _checkpoint("zero-byte"), 2, ("weights.pth", "empty (0 bytes)"),
         after=_nothing_written),
    Case("checkpoint-html-page", _checkpoint("html-page"), 2, ("weights.pth", "html", "download it again"),
         after=_nothing_written),
    Case("checkpoint-truncated", _checkpoint("truncated"), 2, ("weights.pth", "truncated or corrupt"),
         after=_nothing_written),
    Case("checkpoint-git-lfs-pointer", _checkpoint("git-lfs-pointer"), 2, ("git lfs pointer",),
         after=_nothing_written),
    Case("checkpoint-vit-b-for-vit-l", _checkpoint("vit-b-shaped", "sam_vit_l"), 2,
         ("does not fit", "looks like sam_vit_b", "built as sam_vit_l", "--model sam_vit_b"), after=_nothing_written),
    Case("checkpoint-vit-b-for-shapes-tiny", _checkpoint("vit-b-shaped"), 2,
         ("looks like sam_vit_b", "--model sam_vit_b"), after=_nothing_written),
    Case("checkpoint-resnet", _checkpoint("resnet"), 2, ("unrecognised checkpoint layout", "conv1.weight"),
         after=_nothing_written),
    Case("checkpoint-runs-code-zip", _checkpoint("code-zip"), 2, ("python objects", "posix.mkdir"),
         after=_nothing_written),
    Case("checkpoint-runs-code-legacy", _checkpoint("code-legacy"), 2, ("python objects", "posix.mkdir"),
         after=_nothing_written),
    Case("checkpoint-runs-code-pickle", _checkpoint("code-pickle"), 2, ("python objects", "posix.mkdir"),
         after=_nothing_written),
    Case("checkpoint-missing", lambda t: ["export", "--model", "shapes_tiny", "--checkpoint", str(t / "no.pth"),
                                          "-o", str(_output(t))], 2, ("not found", "no.pth"), after=_nothing_written),
    Case("checkpoint-folder", lambda t: (t / "ckpt").mkdir() or ["export", "--model", "shapes_tiny", "--checkpoint",
                                                                  str(t / "ckpt"), "-o", str(_output(t))], 2,
         ("is a folder without model.safetensors",), after=_nothing_written),
    Case("weights-not-downloaded", lambda t: ["export", "--model", "sam_vit_b", "-o", str(_output(t))], 2,
         ("not in the cache", "sam_vit_b_01ec64.pth"), after=_nothing_written),
    Case("unknown-model", lambda t: ["export", "--model", "sam_vit_z", "-o", str(_output(t))], 2,
         ("unknown model", "sam_vit_b"), after=_nothing_written),
    Case("text-without-text-head", _sam_only("--text"), 2, ("no text head to export", "drop --text"),
         after=_nothing_written),
    Case("opset-too-old", lambda t: ["export", "--model", "shapes_tiny", "--opset", "9", "-o", str(_output(t))], 2,
         ("opset 9 is too old",), after=_nothing_written),
    Case("opset-too-new", lambda t: ["export", "--model", "shapes_tiny", "--opset", "99", "-o", str(_output(t))], 2,
         ("opset 99 is newer than this torch can export",), after=_nothing_written),
    Case("output-is-a-folder", _export_to(_folder), 2, ("is a folder", "decoder.onnx")),
    Case("output-under-a-file", _export_to(_under_a_file), 2, ("notes.txt is a file",)),
    Case("output-read-only-folder", _export_to(_read_only_folder), 2, ("cannot write", "permission denied")),
    Case("output-replaces-earlier-export", _export_to(_existing_output), 0, ("wrote",),
         may_change=lambda t: [_output(t)], after=_written),
    Case("device-cuda", _device_case, 2, ("no cuda device", "--device cpu")),
    # the browser page (textsam export --web DIR)
    Case("web-runtime-offline", lambda t: ["export", "--web", str(t / "page")], 2,
         ("onnxruntime-web", "npm pack onnxruntime-web@", "--web-runtime file.tgz"), after=lambda t: _no_page(t)),
    Case("web-runtime-missing", lambda t: ["export", "--web", str(t / "page"), "--web-runtime", str(t / "ort.tgz")], 2,
         ("ort.tgz does not exist", "npm pack onnxruntime-web@"), after=lambda t: _no_page(t)),
    Case("web-runtime-wrong-file", lambda t: (t / "ort.tgz").write_bytes(b"not it") and
         ["export", "--web", str(t / "page"), "--web-runtime", str(t / "ort.tgz")], 2,
         ("is not onnxruntime-web",), after=lambda t: _no_page(t)),
    Case("web-folder-of-the-users-files", lambda t: ["export", "--web", str(_folder(t))], 2,
         ("is not an exported page", "new or empty folder")),
    Case("web-folder-under-a-file", lambda t: ["export", "--web", str(_under_a_file(t).parent / "page")], 2,
         ("notes.txt is a file",)),
    Case("web-with-output-file", lambda t: ["export", "--web", str(t / "page"), "-o", str(_output(t))], 2,
         ("--web writes a whole folder", "drop -o"), after=lambda t: _no_page(t)),
    Case("static-not-a-page", lambda t: ["app", "--static", str(_folder(t))], 2,
         ("is not an exported page", "textsam export --web")),
]


def _no_page(tmp: Path) -> None:
    assert not (tmp / "page").exists(), "a page folder was written"
    assert not [p for p in tmp.iterdir() if p.name.endswith(".part")], "a temporary folder was left"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_export(case: Case, tmp_path: Path) -> None:
    argv = case.setup(tmp_path)
    before = snapshot(tmp_path)
    outcome = run_cli(argv)
    check(f"export/{case.id}", outcome, rc=case.rc, words=case.words, before=before,
          may_change=case.may_change(tmp_path), extra=None if case.after is None else lambda: case.after(tmp_path))
    low = outcome.text.lower()
    assert not [w for w in case.absent if w in low], outcome.text


def test_interrupted_export_keeps_the_earlier_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = _existing_output(tmp_path)

    def interrupted(model, args, path, **kwargs):
        Path(path).write_bytes(b"half a graph")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch.onnx, "export", interrupted)
    before = snapshot(tmp_path)
    outcome = run_cli(["export", "--model", "shapes_tiny", "-o", str(out)])
    check("export/interrupted", outcome, rc=130, words=("interrupted",), before=before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["decoder.onnx"]

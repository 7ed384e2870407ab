"""Battery: ``textsam weights`` offline, with a broken network and with a damaged cache.

The weights table is replaced by two small test entries and ``urllib.request.urlopen`` by a fake
(``serve`` below says what it answers); nothing here can reach the network. Each case: how the cache is
set up, the command line, the exit code and the words expected, and what must hold afterwards.
"""

from __future__ import annotations

import hashlib
import http.client
import socket
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from textsam.weights import pretrained
from textsam.weights.pretrained import WeightsEntry

from ..fake_http import FakeResponse, no_network
from .harness import check, run_cli, snapshot

URL = "https://example.invalid/weights/tiny.pth"
DATA = b"textsam-battery-weights" * 64
SHA = hashlib.sha256(DATA).hexdigest()


def _entry(name: str, *, hf: bool = False) -> WeightsEntry:
    if hf:
        return WeightsEntry(name=name, filename=f"{name}.safetensors", url=None, hf_repo="example/sam-tiny",
                            hf_filename="model.safetensors", size=None, sha256=SHA, license="Apache-2.0",
                            format="hf", description="battery hub weights")
    return WeightsEntry(name=name, filename=f"{name}.pth", url=URL, hf_repo=None, hf_filename=None, size=len(DATA),
                        sha256=SHA, license="Apache-2.0", format="sam", description="battery weights")


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TEXTSAM_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TEXTSAM_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.setattr(pretrained, "WEIGHTS", {"tiny": _entry("tiny"), "other": _entry("other"),
                                                "hubby": _entry("hubby", hf=True)})
    return tmp_path / "home" / "checkpoints"


def serve(monkeypatch: pytest.MonkeyPatch, answer: Callable[[], object]) -> None:
    """``urlopen`` returns (or raises) what ``answer()`` gives."""

    def urlopen(request: urllib.request.Request, timeout: float | None = None) -> object:
        result = answer()
        if isinstance(result, BaseException):
            raise result
        return result

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)


def _raise(err: BaseException) -> Callable[[], object]:
    return lambda: err


def place(cache: Path, name: str, data: bytes = DATA) -> Path:
    cache.mkdir(parents=True, exist_ok=True)
    (cache / f"{name}.pth").write_bytes(data)
    return cache / f"{name}.pth"


@dataclass(frozen=True)
class Case:
    """``setup(tmp, cache, monkeypatch)`` prepares the cache/network and returns the argv."""

    id: str
    setup: Callable[[Path, Path, pytest.MonkeyPatch], list[str]]
    rc: int
    words: tuple[str, ...] = ()
    absent: tuple[str, ...] = ()  # words that must NOT appear
    may_change: Callable[[Path], list[Path]] = field(default=lambda cache: [])
    after: Callable[[Path], None] | None = None


def _download(*names: str, env: dict[str, str] | None = None, answer: Callable[[], object] | None = None,
              cache_data: dict[str, bytes] | None = None) -> Callable[[Path, Path, pytest.MonkeyPatch], list[str]]:
    def setup(tmp: Path, cache: Path, mp: pytest.MonkeyPatch) -> list[str]:
        for k, v in (env or {}).items():
            mp.setenv(k, v)
        if answer is not None:
            serve(mp, answer)
        for name, data in (cache_data or {}).items():
            place(cache, name, data)
        return ["weights", "download", *names, "--no-progress"]
    return setup


def _verify(*names: str, cache_data: dict[str, bytes] | None = None) -> Callable[[Path, Path, pytest.MonkeyPatch],
                                                                               list[str]]:
    def setup(tmp: Path, cache: Path, mp: pytest.MonkeyPatch) -> list[str]:
        for name, data in (cache_data or {}).items():
            place(cache, name, data)
        return ["weights", "verify", *names]
    return setup


def _home_is_a_file(tmp: Path, cache: Path, mp: pytest.MonkeyPatch) -> list[str]:
    (tmp / "home_file").write_text("my notes")
    mp.setenv("TEXTSAM_HOME", str(tmp / "home_file"))
    serve(mp, lambda: FakeResponse(DATA))
    return ["weights", "download", "tiny", "--no-progress"]


def _nothing_in_cache(cache: Path) -> None:
    assert not (cache / "tiny.pth").exists(), "a file was placed under the final name"
    part = cache / "tiny.pth.part"
    assert not part.exists() or part.stat().st_size == 0 or part.read_bytes() == DATA[: part.stat().st_size]


def _part_kept(cache: Path) -> None:
    assert not (cache / "tiny.pth").exists()
    part = (cache / "tiny.pth.part").read_bytes()
    assert 0 < len(part) < len(DATA) and DATA.startswith(part)


def _downloaded(cache: Path) -> None:
    assert (cache / "tiny.pth").read_bytes() == DATA and not (cache / "tiny.pth.part").exists()


def _with_part(status: int, body: bytes) -> Callable[[Path, Path, pytest.MonkeyPatch], list[str]]:
    """A .part file from an interrupted download; the server answers ``status`` with ``body``."""

    def setup(tmp: Path, cache: Path, mp: pytest.MonkeyPatch) -> list[str]:
        cache.mkdir(parents=True)
        (cache / "tiny.pth.part").write_bytes(DATA[:500])

        def answer() -> object:
            response = FakeResponse(body)
            response.status = status
            return response

        serve(mp, answer)
        return ["weights", "download", "tiny", "--no-progress"]
    return setup


NO_NET = urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution"))
HTTP_404 = urllib.error.HTTPError(URL, 404, "Not Found", {}, None)  # type: ignore[arg-type]
HTML = b"<!DOCTYPE html><html><body>Please sign in</body></html>"

CASES = [
    Case("download-offline", _download("tiny", env={"TEXTSAM_OFFLINE": "1"}), 2,
         ("downloads are disabled", URL, "tiny.pth", "TEXTSAM_OFFLINE"), after=_nothing_in_cache),
    Case("download-hf-offline", _download("hubby", env={"HF_HUB_OFFLINE": "1"}), 2,
         ("downloads are disabled", "huggingface.co/example/sam-tiny", "hubby.safetensors")),
    Case("download-no-network", _download("tiny", answer=_raise(NO_NET)), 2,
         ("failed", "name resolution", "check the network", "place it at"), after=_nothing_in_cache),
    Case("download-timeout", _download("tiny", answer=_raise(TimeoutError("timed out"))), 2,
         ("failed", "timed out"), after=_nothing_in_cache),
    Case("download-http-404", _download("tiny", answer=_raise(HTTP_404)), 2, ("failed", "404")),
    Case("download-reset-midway", _download("tiny", answer=lambda: FakeResponse(DATA, fail_after=600, chunk=100)), 2,
         ("connection reset", "partial file", "resumes"), may_change=lambda c: [c / "tiny.pth.part"],
         after=_part_kept),
    Case("download-short-body", _download("tiny", answer=lambda: FakeResponse(DATA[:700], length=len(DATA))), 2,
         ("failed",), after=_part_kept),
    Case("download-html-page", _download("tiny", answer=lambda: FakeResponse(HTML)), 2, ("wrong size",),
         after=_nothing_in_cache),
    Case("download-bad-hash", _download("tiny", answer=lambda: FakeResponse(DATA[::-1])), 2,
         ("corrupt", f"expected sha256 {SHA}"), after=_nothing_in_cache),
    Case("download-unknown-name", _download("sam_vit_z"), 2, ("unknown weights name", "known names: hubby")),
    Case("download-nothing-named", lambda t, c, m: ["weights", "download"], 2, ("--all",)),
    Case("download-cache-not-writable", _home_is_a_file, 2, ("cannot write to the weights cache", "TEXTSAM_HOME")),
    Case("download-cached-corrupt", _download("tiny", cache_data={"tiny": DATA[:-1] + b"!"}), 2,
         ("tiny.pth", "corrupt", "delete it")),
    Case("download-resumes-part", _with_part(206, DATA[500:]), 0, ("tiny.pth",),
         may_change=lambda c: [c / "tiny.pth.part"], after=_downloaded),
    Case("download-range-ignored", _with_part(200, DATA), 0, ("tiny.pth",),
         may_change=lambda c: [c / "tiny.pth.part"], after=_downloaded),
    Case("download-ok", _download("tiny", answer=lambda: FakeResponse(DATA)), 0, ("tiny.pth",), after=_downloaded),
    Case("verify-corrupt", _verify(cache_data={"tiny": DATA[:-1] + b"!"}), 1,
         ("tiny: failed", "tiny.pth", "corrupt", f"expected sha256 {SHA}", "textsam weights download tiny")),
    Case("verify-truncated", _verify("tiny", cache_data={"tiny": DATA[:100]}), 1,
         ("tiny: failed", "tiny.pth", "wrong size")),
    Case("verify-html-page", _verify(cache_data={"tiny": HTML, "other": DATA}), 1,
         ("tiny: failed", "tiny.pth", "other: ok")),
    Case("verify-named-missing", _verify("other"), 1, ("other: missing", "other.pth")),
    Case("verify-unknown-name", _verify("nope"), 2, ("unknown weights name 'nope'",)),
    Case("verify-empty-cache", _verify(), 0, ("no checkpoints cached",)),
    Case("path-unknown-name", lambda t, c, m: ["weights", "path", "nope"], 2, ("unknown weights name",)),
    Case("list-offline", lambda t, c, m: (m.setenv("TEXTSAM_OFFLINE", "1"), ["weights", "list"])[1], 0,
         ("tiny", "hubby", "cache:")),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_weights(case: Case, tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    argv = case.setup(tmp_path, home, monkeypatch)
    before = snapshot(tmp_path)
    outcome = run_cli(argv)
    low = outcome.text.lower()
    check(f"weights/{case.id}", outcome, rc=case.rc, words=case.words, before=before,
          may_change=case.may_change(home), extra=None if case.after is None else lambda: case.after(home))
    assert "weights_only" not in low


def test_a_download_is_never_visible_half_written(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While bytes arrive, only the .part file grows; the final name appears once, complete and verified."""
    seen: list[bool] = []

    class Watching(FakeResponse):
        def read(self, n: int = -1) -> bytes:
            seen.append((home / "tiny.pth").exists())
            return super().read(n)

    serve(monkeypatch, lambda: Watching(DATA))
    assert run_cli(["weights", "download", "tiny", "--no-progress"]).rc == 0
    assert seen and not any(seen)
    assert (home / "tiny.pth").read_bytes() == DATA


def test_disk_full_during_a_download_is_not_called_a_network_error(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import builtins

    real_open = builtins.open

    class FullDisk:
        """A .part file that takes 300 bytes, then reports a full disk."""

        def __init__(self, f) -> None:
            self.f, self.room = f, 300

        def write(self, data) -> int:
            if self.room <= 0:
                raise OSError(28, "No space left on device")
            n = self.f.write(data[: self.room])
            self.room -= n
            return n

        def __enter__(self):
            return self

        def __exit__(self, *exc: object) -> None:
            self.f.close()

    def fake_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        return FullDisk(f) if str(file).endswith(".part") and "b" in mode and "r" not in mode else f

    serve(monkeypatch, lambda: FakeResponse(DATA))
    monkeypatch.setattr(builtins, "open", fake_open)
    before = snapshot(tmp_path)
    outcome = run_cli(["weights", "download", "tiny", "--no-progress"])
    monkeypatch.setattr(builtins, "open", real_open)
    check("weights/download-disk-full", outcome, rc=2, before=before,
          words=("no space left on device", "free some space", "tiny.pth.part", "resumed"),
          extra=lambda: _part_kept(home))
    assert "network" not in outcome.err.lower()


def test_incomplete_read_is_a_network_error() -> None:
    err = pretrained._network_error(_entry("tiny"), Path("/nowhere/tiny.pth"), http.client.IncompleteRead(b"", 5))
    assert "failed" in str(err) and "place it at /nowhere/tiny.pth" in str(err)

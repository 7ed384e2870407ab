"""``textsam weights ...`` and the CLI's error handling, with the network mocked out."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from textsam.cli import main
from textsam.weights import pretrained
from textsam.weights.pretrained import WeightsEntry

from .fake_http import FakeResponse, no_network

URL = "https://example.invalid/weights/tiny.pth"
DATA = b"textsam-test-weights" * 100
SHA = hashlib.sha256(DATA).hexdigest()
REPO = Path(__file__).resolve().parents[1]


def make_entry(name: str, sha256: str = SHA) -> WeightsEntry:
    return WeightsEntry(
        name=name, filename=f"{name}.pth", url=URL, hf_repo=None, hf_filename=None, size=len(DATA),
        sha256=sha256, license="Apache-2.0", format="sam", description="test weights",
    )


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TEXTSAM_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TEXTSAM_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.setattr(pretrained, "WEIGHTS", {"tiny": make_entry("tiny"), "other": make_entry("other")})
    return tmp_path / "home" / "checkpoints"


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    urls: list[str] = []

    def urlopen(request: urllib.request.Request, timeout: float | None = None) -> FakeResponse:
        urls.append(request.full_url)
        return FakeResponse(DATA)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return urls


def place(home: Path, name: str, data: bytes = DATA) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    path = home / f"{name}.pth"
    path.write_bytes(data)
    return path


def assert_user_error(rc: int, err: str, text: str) -> None:
    assert rc == 2
    assert err.startswith("textsam: error:") and text in err
    assert "Traceback" not in err


def test_list_shows_table_and_cache_state(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    place(home, "tiny")
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    assert lines["tiny"][1:4] == ["0.0", "Apache-2.0", "yes"] and lines["tiny"][4] == URL
    assert lines["other"][3] == "no"
    assert str(home) in out


def test_download_then_path(home: Path, served: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["weights", "download", "tiny", "--no-progress"]) == 0
    assert (home / "tiny.pth").read_bytes() == DATA and served == [URL]
    assert str(home / "tiny.pth") in capsys.readouterr().out
    assert main(["weights", "path", "tiny"]) == 0
    assert capsys.readouterr().out.strip() == str(home / "tiny.pth")


def test_download_all(home: Path, served: list[str]) -> None:
    assert main(["weights", "download", "--all", "--no-progress"]) == 0
    assert sorted(p.name for p in home.glob("*.pth")) == ["other.pth", "tiny.pth"]


def test_download_bad_hash_is_a_user_error(
    home: Path, served: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(pretrained.WEIGHTS, "tiny", make_entry("tiny", sha256="0" * 64))
    rc = main(["weights", "download", "tiny", "--no-progress"])
    assert_user_error(rc, capsys.readouterr().err, f"expected sha256 {'0' * 64}, got {SHA}")


@pytest.mark.parametrize(
    ("argv", "text"),
    [
        (["weights", "download", "nope"], "Known names: other, tiny"),
        (["weights", "download"], "--all"),
        (["weights", "download", "tiny", "--all"], "not both"),
        (["weights", "path", "nope"], "Unknown weights name 'nope'"),
        (["weights", "frobnicate"], "invalid choice"),
        (["weights", "list", "--bogus"], "unrecognized arguments"),
        ([], "required"),
    ],
)
def test_user_errors_have_no_traceback(argv: list[str], text: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert_user_error(main(argv), capsys.readouterr().err, text)


def test_offline_download_names_source_and_destination(
    home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TEXTSAM_OFFLINE", "1")
    rc = main(["weights", "download", "tiny"])
    err = capsys.readouterr().err
    assert_user_error(rc, err, URL)
    assert str(home / "tiny.pth") in err


def test_verify(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["weights", "verify"]) == 0  # nothing cached: nothing to check
    place(home, "tiny")
    assert main(["weights", "verify"]) == 0
    assert f"tiny: OK sha256={SHA}" in capsys.readouterr().out
    assert main(["weights", "verify", "other"]) == 1  # named but missing
    assert "other: MISSING" in capsys.readouterr().out
    place(home, "tiny", DATA[::-1])
    assert main(["weights", "verify", "tiny"]) == 1
    out = capsys.readouterr().out
    assert "tiny: FAILED" in out and f"expected sha256 {SHA}" in out


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("textsam ")
    assert main(["weights", "--help"]) == 0
    assert "download" in capsys.readouterr().out


def test_interrupt_and_unexpected_errors(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(pretrained, "resolve_weights", interrupted)
    assert main(["weights", "download", "tiny"]) == 130

    def bug(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(pretrained, "resolve_weights", bug)
    capsys.readouterr()
    assert main(["weights", "download", "tiny"]) == 1
    err = capsys.readouterr().err
    assert "unexpected ZeroDivisionError: boom" in err and "Traceback" not in err and "-v" in err
    assert main(["weights", "download", "tiny", "-v"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_python_dash_m_and_cheap_import(home: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run(
        [sys.executable, "-m", "textsam", "weights", "path", "sam_vit_b"],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == str(home / "sam_vit_b_01ec64.pth")
    code = "import sys, textsam.cli; bad = {'torch', 'numpy', 'open_clip'} & set(sys.modules); print(sorted(bad))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, check=False)
    assert run.returncode == 0 and run.stdout.strip() == "[]", run.stdout + run.stderr


def test_unwritable_cache_is_a_user_error(
    tmp_path: Path, served: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "home_file").write_text("not a folder")
    monkeypatch.setenv("TEXTSAM_HOME", str(tmp_path / "home_file"))
    rc = main(["weights", "download", "tiny", "--no-progress"])
    assert_user_error(rc, capsys.readouterr().err, "cannot write to the weights cache")
    assert served == []  # nothing was downloaded into nowhere
    assert (tmp_path / "home_file").read_text() == "not a folder"


def test_network_failure_keeps_the_partial_file_and_says_how_to_resume(
    home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(urllib.request, "urlopen",
                        lambda request, timeout=None: FakeResponse(DATA, fail_after=len(DATA) // 2, chunk=64))
    rc = main(["weights", "download", "tiny", "--no-progress"])
    err = capsys.readouterr().err
    assert_user_error(rc, err, "Connection reset by peer")
    assert "running the command again resumes it" in err and str(home / "tiny.pth") in err
    assert (home / "tiny.pth.part").stat().st_size > 0 and not (home / "tiny.pth").exists()


def test_os_errors_and_memory_errors_are_one_line_user_errors(monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    import errno

    from textsam.cli import weights as weights_command

    for err, words in [(OSError(errno.ENOSPC, "No space left on device", "/data/out.png"), "free some disk space"),
                       (PermissionError(errno.EACCES, "Permission denied", "/root/x"), "check the permissions"),
                       (MemoryError(), "out of memory")]:
        def boom(args, err=err):
            raise err

        monkeypatch.setattr(weights_command, "weights_list", boom)
        assert main(["weights", "list"]) == 2
        out = capsys.readouterr().err
        assert out.count("textsam: error:") == 1 and words in out and "unexpected" not in out

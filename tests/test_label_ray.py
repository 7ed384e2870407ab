"""`textsam label --engine ray`: a local Ray instance with 2 workers gives the same dataset and store as one
uninterrupted local process; without Ray installed, one clear line and exit 2.

Ray's actors are other processes, so the labels here are computed for real (no answer cache as in
test_label.py): shapes_tiny on three small images, once locally and once on Ray.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from textsam.cli import main

from .tiny import label_images

CLASSES = "circle,square"

# Ray Data's own deprecation notices about its context's fields (it reads them itself when it copies the context)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The three images of test_label.py: the example image, its mirror and a crop in a subfolder."""
    return label_images(tmp_path_factory.mktemp("label_ray_in") / "imgs")


def _label(*argv: object) -> int:
    return main(["label", *map(str, argv), "--classes", CLASSES, "--model", "shapes_tiny", "--no-progress"])


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_two_ray_workers_give_the_files_of_one_local_run(images: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    assert _label(images, "-o", tmp_path / "local") == 0
    assert not ray.is_initialized()
    assert _label(images, "-o", tmp_path / "ray", "--engine", "ray", "--workers", 2) == 0
    assert not ray.is_initialized(), "the local Ray instance this command started is shut down"
    assert "Traceback" not in capsys.readouterr().err
    ray_files = _files(tmp_path / "ray")
    assert ray_files == _files(tmp_path / "local")  # dataset, skipped.json, run.json, outputs.json, every record
    assert len([k for k in ray_files if k.startswith(".textsam-label/images/")]) == 3
    # finished: the same command again starts no Ray and changes nothing
    assert _label(images, "-o", tmp_path / "ray", "--engine", "ray", "--workers", 2) == 0
    assert "3 of 3 image(s) already labelled" in capsys.readouterr().err
    assert _files(tmp_path / "ray") == ray_files


def test_without_ray_one_line_and_exit_2(images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    monkeypatch.setitem(sys.modules, "ray.data", None)
    assert _label(images, "-o", tmp_path / "out", "--engine", "ray") == 2
    err = capsys.readouterr().err
    assert "pip install 'textsam[distributed]'" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists(), "nothing is written"
    assert _label(images, "-o", tmp_path / "out", "--workers", 3) == 2
    assert "--engine ray" in capsys.readouterr().err

"""The weights table and the machinery that puts a checkpoint file on disk.

``WEIGHTS`` maps a name (the ``weights`` field of a :class:`textsam.config.ModelConfig`) to where the
file comes from (a URL or a Hugging Face hub id), its size, sha256 and license.
:func:`resolve_weights` returns the local path of a checkpoint, downloading it into
:func:`cache_dir` when needed and allowed.

Downloads go through the downloader that datasets share (:mod:`textsam.download`): they stream into
``<file>.part`` while hashing, resume with an HTTP ``Range`` request after an interruption, check size
and sha256, and only then rename to the final name. A verified file gets a small ``<file>.sha256``
sidecar so that multi-GB checkpoints are not rehashed on every load.
Nothing here touches the network at import time.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

from textsam.download import (
    RemoteFile,
    Wording,
    check_writable,
    download_file,
    format_size,
    is_offline,
    network_error,
    offline_reason,
    part_path,
    sha256_file,
    textsam_home,
)
from textsam.download import verify_file as _verify_remote
from textsam.errors import WeightsError

logger = logging.getLogger(__name__)

WeightsFormat = Literal["sam", "hf", "textsam"]

__all__ = [
    "WeightsEntry", "WEIGHTS", "BUNDLED", "bundled_path", "cache_dir", "is_offline", "get_entry",
    "weights_path", "is_cached", "sha256_file", "verify_file", "verify_cached", "resolve_weights", "download",
]

_WORDING = Wording(
    error=WeightsError,
    noun="Checkpoint",
    folder="the weights cache",
    elsewhere="set TEXTSAM_HOME to a folder you can write to (its checkpoints/ subfolder holds the checkpoints)",
)


@dataclass(frozen=True)
class WeightsEntry:
    """One downloadable checkpoint.

    ``format`` is ``"sam"`` (official segment-anything / MobileSAM ``.pth`` state dict), ``"hf"``
    (transformers ``SamModel`` safetensors) or ``"textsam"`` (our own bundle). Either ``url`` or
    ``hf_repo`` + ``hf_filename`` says where the file comes from. ``size`` is in bytes; ``size`` and
    ``sha256`` are ``None`` when not known.
    """

    name: str
    filename: str
    url: str | None
    hf_repo: str | None
    hf_filename: str | None
    size: int | None
    sha256: str | None
    license: str
    format: WeightsFormat
    description: str

    @property
    def source(self) -> str:
        """Where the file is downloaded from: a URL (hub entries give their ``resolve`` URL)."""
        if self.url is not None:
            return self.url
        if self.hf_repo is not None and self.hf_filename is not None:
            return f"https://huggingface.co/{self.hf_repo}/resolve/main/{self.hf_filename}"
        return "(no download source)"

    @property
    def remote(self) -> RemoteFile:
        """What the shared downloader (:mod:`textsam.download`) fetches and checks for this entry."""
        return RemoteFile(name=self.name, url=self.source, size=self.size, sha256=self.sha256)


_FB = "https://dl.fbaipublicfiles.com/segment_anything"


def _sam_entry(name: str, url: str, size: int, sha256: str, description: str) -> WeightsEntry:
    return WeightsEntry(
        name=name,
        filename=url.rsplit("/", 1)[-1],
        url=url,
        hf_repo=None,
        hf_filename=None,
        size=size,
        sha256=sha256,
        license="Apache-2.0",
        format="sam",
        description=description,
    )


def _hf_entry(name: str, repo: str, sha256: str | None, description: str) -> WeightsEntry:
    return WeightsEntry(
        name=name,
        filename=f"{name}.safetensors",
        url=None,
        hf_repo=repo,
        hf_filename="model.safetensors",
        size=None,
        sha256=sha256,
        license="Apache-2.0",
        format="hf",
        description=description,
    )


WEIGHTS: dict[str, WeightsEntry] = {
    "sam_vit_b": _sam_entry(
        "sam_vit_b",
        f"{_FB}/sam_vit_b_01ec64.pth",
        375_042_383,
        "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        "Official SAM ViT-B (91M params)",
    ),
    "sam_vit_l": _sam_entry(
        "sam_vit_l",
        f"{_FB}/sam_vit_l_0b3195.pth",
        1_249_524_607,
        "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
        "Official SAM ViT-L (308M params)",
    ),
    "sam_vit_h": _sam_entry(
        "sam_vit_h",
        f"{_FB}/sam_vit_h_4b8939.pth",
        2_564_550_879,
        "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
        "Official SAM ViT-H (636M params)",
    ),
    "mobile_sam": _sam_entry(
        "mobile_sam",
        "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
        40_728_226,
        "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
        "MobileSAM (TinyViT encoder, 10M params)",
    ),
    "sam_vit_b_hf": _hf_entry(
        "sam_vit_b_hf",
        "facebook/sam-vit-base",
        "892c410e496344e527255ccdcb2cb7244a609acb5389c7c4fdba1288f861c579",
        "SAM ViT-B in transformers SamModel format (~375 MB)",
    ),
    "sam_vit_l_hf": _hf_entry(
        "sam_vit_l_hf",
        "facebook/sam-vit-large",
        None,
        "SAM ViT-L in transformers SamModel format (~1.25 GB)",
    ),
    "sam_vit_h_hf": _hf_entry(
        "sam_vit_h_hf",
        "facebook/sam-vit-huge",
        "edfb0462392541fca9af44ff039bfb32dbd0c939997f3abb77a26e23af7afd7c",
        "SAM ViT-H in transformers SamModel format (~2.56 GB)",
    ),
}


# Models shipped inside the package (trained by this project; no download, always offline).
PACKAGE_WEIGHTS = Path(__file__).resolve().parent
BUNDLED: dict[str, str] = {"shapes_tiny": "shapes_tiny.safetensors"}


def bundled_path(name: str) -> Path:
    """Path of a bundled model file; :class:`WeightsError` when the package does not contain it."""
    path = PACKAGE_WEIGHTS / BUNDLED[name]
    if not path.is_file():
        raise WeightsError(
            f"the bundled {name} weights are missing ({path}). Reinstall textsam, or train them again with "
            f"the commands in docs/{name}.md."
        )
    return path


# --------------------------------------------------------------------------------------------------
# Locations and settings


def cache_dir() -> Path:
    """The folder holding downloaded checkpoints.

    ``$TEXTSAM_HOME/checkpoints`` if ``TEXTSAM_HOME`` is set, else
    ``$XDG_CACHE_HOME/textsam/checkpoints`` (``~/.cache/textsam/checkpoints`` by default).
    The folder is not created here.
    """
    return textsam_home() / "checkpoints"


def get_entry(name: str) -> WeightsEntry:
    """The table entry for ``name``; raises :class:`WeightsError` listing the known names."""
    try:
        return WEIGHTS[name]
    except KeyError:
        known = ", ".join(sorted(WEIGHTS))
        raise WeightsError(f"Unknown weights name {name!r}. Known names: {known}.") from None


def weights_path(name: str) -> Path:
    """Where the checkpoint ``name`` lives (or will live) in the cache; does not download."""
    return cache_dir() / get_entry(name).filename


def is_cached(name: str) -> bool:
    """True when the checkpoint file ``name`` is present in the cache (not verified)."""
    return weights_path(name).is_file()


def _sidecar_path(dest: Path) -> Path:
    return dest.with_suffix(dest.suffix + ".sha256")


# --------------------------------------------------------------------------------------------------
# Hashing


def verify_file(path: Path, entry: WeightsEntry) -> str:
    """Hash ``path`` and compare with ``entry`` (size and sha256 where known).

    Returns the hex sha256. Raises :class:`WeightsError` with expected vs actual on a mismatch or
    when the file does not exist.
    """
    return _verify_remote(Path(path), entry.remote, _WORDING)


def verify_cached(name: str) -> str:
    """Re-hash the cached checkpoint ``name`` (ignoring any sidecar) and return its sha256.

    Raises :class:`WeightsError` when the file is missing or does not match the table.
    """
    entry = get_entry(name)
    path = cache_dir() / entry.filename
    if not path.is_file():
        raise WeightsError(f"Weights {name!r} are not cached: {path} does not exist.")
    digest = verify_file(path, entry)
    _write_sidecar(path, digest)
    return digest


def _write_sidecar(path: Path, digest: str) -> None:
    """Remember that ``path`` (as it is now: size and mtime) hashes to ``digest``."""
    st = path.stat()
    try:
        _sidecar_path(path).write_text(f"{digest} {st.st_size} {st.st_mtime_ns}\n")
    except OSError as err:  # a read-only cache still works, it just rehashes
        logger.debug("Could not write %s: %s", _sidecar_path(path), err)


def _sidecar_matches(path: Path, expected: str) -> bool:
    """True when the sidecar says ``path`` (unchanged since) hashes to ``expected``."""
    try:
        digest, size, mtime_ns = _sidecar_path(path).read_text().split()
        st = path.stat()
    except (OSError, ValueError):
        return False
    return digest == expected.lower() and int(size) == st.st_size and int(mtime_ns) == st.st_mtime_ns


def _check_cached(path: Path, entry: WeightsEntry) -> None:
    """Check a cached file: sha256 once (then trust the sidecar), else its size when known."""
    if entry.sha256 is not None:
        if _sidecar_matches(path, entry.sha256):
            return
        logger.info("Verifying sha256 of %s (once)", path)
        _write_sidecar(path, verify_file(path, entry))
        return
    actual = path.stat().st_size
    if entry.size is not None and actual != entry.size:
        raise WeightsError(
            f"Checkpoint {path} for {entry.name!r} has the wrong size: expected {entry.size} bytes, "
            f"got {actual}. Delete it and download it again."
        )


# --------------------------------------------------------------------------------------------------
# Resolution


def _offline_message(entry: WeightsEntry, dest: Path) -> str:
    sha = f", sha256 {entry.sha256}" if entry.sha256 else ""
    return (
        f"Weights {entry.name!r} are not in the cache and downloads are disabled {offline_reason()}. "
        f"Download {entry.source} ({format_size(entry.size)}{sha}) and place it at {dest} "
        f"(set TEXTSAM_HOME to use another cache folder). To download automatically, go online: "
        f"unset TEXTSAM_OFFLINE and HF_HUB_OFFLINE (or pass offline=False), then run "
        f"`textsam weights download {entry.name}`."
    )


def resolve_weights(name: str, *, offline: bool | None = None, progress: bool = True) -> Path:
    """The local path of checkpoint ``name``, downloading it into :func:`cache_dir` if needed.

    A cached file is checked once against the table's sha256 (the result is remembered in a
    ``.sha256`` sidecar). ``offline=None`` follows :func:`is_offline`; when offline and the file is
    missing a :class:`WeightsError` says what to download from where and where to put it.
    """
    entry = get_entry(name)
    dest = cache_dir() / entry.filename
    if dest.is_file():
        logger.debug("Using cached %s", dest)
        _check_cached(dest, entry)
        return dest
    if offline is None:
        offline = is_offline()
    if offline:
        raise WeightsError(_offline_message(entry, dest))
    return download(entry, dest, progress=progress)


def download(entry: WeightsEntry, dest: Path, *, progress: bool = True) -> Path:
    """Download ``entry`` to ``dest`` (verified, atomically renamed) and return ``dest``.

    A URL entry goes through the shared downloader (:func:`textsam.download.download_file`: ``.part``
    file, ``Range`` resume, size and sha256 check); a hub entry through ``huggingface_hub``.
    """
    dest = Path(dest)
    check_writable(dest, _WORDING)
    if entry.url is not None:
        digest = download_file(entry.remote, dest, progress=progress, wording=_WORDING)
    elif entry.hf_repo is not None and entry.hf_filename is not None:
        digest = _download_hf(entry, entry.hf_repo, entry.hf_filename, dest)
    else:
        raise WeightsError(f"Weights {entry.name!r} have no download source; place {entry.filename} by hand.")
    _write_sidecar(dest, digest)
    logger.info("Saved %s to %s", entry.name, dest)
    return dest


def _network_error(entry: WeightsEntry, dest: Path, err: BaseException) -> WeightsError:
    """The shared downloader's network error, worded for checkpoints."""
    return cast(WeightsError, network_error(entry.remote, dest, err, _WORDING))


def _download_hf(entry: WeightsEntry, repo_id: str, filename: str, dest: Path) -> str:
    """Fetch a hub file with ``huggingface_hub`` and link (or copy) it to ``dest``; return the sha256.

    The hub library shows its own progress bar (``HF_HUB_DISABLE_PROGRESS_BARS`` turns it off).
    """
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as err:  # pragma: no cover - a declared dependency
        raise WeightsError("Hub weights need huggingface_hub: pip install huggingface_hub") from err
    try:
        hub_path = hf_hub_download(
            repo_id=repo_id, filename=filename, cache_dir=str(cache_dir() / "hf")
        )
    except Exception as err:  # noqa: BLE001 - the hub raises many types; all mean "download failed"
        raise _network_error(entry, dest, err) from err
    source = Path(hub_path).resolve()
    digest = verify_file(source, entry)
    _place(source, dest)
    return digest


def _place(source: Path, dest: Path) -> None:
    """Hard-link ``source`` to ``dest`` (no copy of multi-GB files); copy when linking fails."""
    part = part_path(dest)
    part.unlink(missing_ok=True)
    try:
        os.link(source, part)
    except OSError:
        shutil.copyfile(source, part)
    os.replace(part, dest)

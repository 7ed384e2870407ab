"""Putting one file from a URL on disk, verified: the downloader that weights and datasets share.

:func:`download_file` streams a :class:`RemoteFile` into ``<dest>.part`` while hashing it, resumes an
interrupted download with an HTTP ``Range`` request, checks the size and sha256 (where the table knows
them), and only then renames ``.part`` to ``dest``: the final name only ever holds a verified file.
:func:`verify_file` checks a file that is already there (one a user placed by hand). How the errors read
(their class, what the file is called, what to do when its folder is full or read-only) comes from a
:class:`Wording`, so each caller's messages point at its own settings. Offline mode
(``TEXTSAM_OFFLINE`` / ``HF_HUB_OFFLINE``) is read by :func:`is_offline`. Nothing here touches the
network at import time, and imports nothing beyond the standard library until a download runs.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import logging
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from textsam.errors import DownloadError, TextSamError

__all__ = [
    "textsam_home",
    "RemoteFile",
    "Wording",
    "download_file",
    "verify_file",
    "sha256_file",
    "is_offline",
    "offline_reason",
    "check_writable",
    "network_error",
    "is_network_failure",
    "part_path",
    "format_size",
]

logger = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20
TIMEOUT_S = 60.0
_TRUE = {"1", "true", "yes"}
OFFLINE_VARS = ("TEXTSAM_OFFLINE", "HF_HUB_OFFLINE")


def textsam_home() -> Path:
    """textsam's cache folder: ``$TEXTSAM_HOME`` if set, else ``$XDG_CACHE_HOME/textsam`` (``~/.cache/textsam`` by
    default). Each kind of download has its subfolder (``checkpoints/``, ``web/``). Not created here."""
    home = os.environ.get("TEXTSAM_HOME")
    if home:
        return Path(home).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "textsam"


@dataclass(frozen=True)
class RemoteFile:
    """One file to fetch: ``name`` (its label in messages), ``url``, ``size`` in bytes and hex ``sha256``;
    ``size`` and ``sha256`` are ``None`` where no public source states them (then that check is skipped)."""

    name: str
    url: str
    size: int | None
    sha256: str | None


@dataclass(frozen=True)
class Wording:
    """How download errors read for one kind of file.

    ``error``: the exception class raised; ``noun``: what the file is ("Checkpoint", "Archive");
    ``folder``: what its folder is ("the weights cache"); ``elsewhere``: how to use another folder
    (said when the folder cannot be written or is full).
    """

    error: type[TextSamError] = DownloadError
    noun: str = "File"
    folder: str = "the download folder"
    elsewhere: str = "choose another folder"


def part_path(dest: Path) -> Path:
    """Where ``dest`` is downloaded to before it is verified: ``<dest>.part``."""
    return dest.with_suffix(dest.suffix + ".part")


def format_size(size: int | None) -> str:
    """``"815.6 MB"``, ``"19.34 GB"`` or ``"unknown size"``."""
    if size is None:
        return "unknown size"
    return f"{size / 1e9:.2f} GB" if size >= 1e9 else f"{size / 1e6:.1f} MB"


def is_offline() -> bool:
    """True when ``TEXTSAM_OFFLINE`` or ``HF_HUB_OFFLINE`` is ``1``, ``true`` or ``yes``."""
    return any(os.environ.get(var, "").strip().lower() in _TRUE for var in OFFLINE_VARS)


def offline_reason() -> str:
    """``"(TEXTSAM_OFFLINE=1)"`` naming the variables that are set, or ``"(offline=True)"``."""
    set_vars = [v for v in OFFLINE_VARS if os.environ.get(v, "").strip().lower() in _TRUE]
    return f"({', '.join(f'{v}=1' for v in set_vars)})" if set_vars else "(offline=True)"


# --------------------------------------------------------------------------------------------------
# Hashing and verification


def sha256_file(path: Path | str, chunk_size: int = CHUNK_SIZE) -> str:
    """The hex sha256 digest of a file, read in chunks."""
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        _hash_stream(f, hasher, chunk_size)
    return hasher.hexdigest()


def _hash_stream(f: BinaryIO, hasher: hashlib._Hash, chunk_size: int = CHUNK_SIZE) -> None:
    while chunk := f.read(chunk_size):
        hasher.update(chunk)


def verify_file(path: Path, remote: RemoteFile, wording: Wording = Wording()) -> str:
    """Hash ``path`` and compare it with ``remote`` (size and sha256 where known); return the hex sha256.

    Raises ``wording.error`` with expected vs actual on a mismatch, or when the file is missing or unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise wording.error(f"{wording.noun} file {path} does not exist.")
    try:
        actual_size = path.stat().st_size
        if remote.size is not None and actual_size != remote.size:
            raise wording.error(
                f"{wording.noun} {path} for {remote.name!r} has the wrong size: expected {remote.size} bytes, "
                f"got {actual_size}. Delete it and download it again."
            )
        digest = sha256_file(path)
    except OSError as err:
        raise wording.error(f"cannot read {wording.noun.lower()} {path}: {err.strerror or err}. Check its "
                            "permissions, or delete it and download it again.") from None
    if remote.sha256 is not None and digest != remote.sha256.lower():
        raise wording.error(
            f"{wording.noun} {path} for {remote.name!r} is corrupt: expected sha256 {remote.sha256}, "
            f"got {digest}. Delete it and download it again."
        )
    return digest


# --------------------------------------------------------------------------------------------------
# Errors


def check_writable(dest: Path, wording: Wording = Wording()) -> None:
    """Create ``dest``'s folder and make sure a file can be written in it (before any download starts)."""
    part = part_path(dest)
    existed = part.exists()
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(part, "ab"):
            pass
    except OSError as err:
        raise wording.error(
            f"cannot write to {wording.folder} {dest.parent}: {err.strerror or err}. "
            f"{wording.elsewhere[:1].upper()}{wording.elsewhere[1:]}."
        ) from None
    if not existed:
        part.unlink(missing_ok=True)


def network_error(remote: RemoteFile, dest: Path, err: BaseException, wording: Wording = Wording()) -> TextSamError:
    """The error for a failed transfer: what failed, whether a partial file is kept, where to place the file."""
    part = part_path(dest)
    has_part = part.is_file() and part.stat().st_size > 0
    kept = f" The partial file {part} is kept; running the command again resumes it." if has_part else ""
    return wording.error(
        f"Downloading {remote.name!r} from {remote.url} failed: {err}.{kept} Check the network connection and "
        f"try again, or download the file by hand and place it at {dest} (TEXTSAM_OFFLINE=1 never downloads)."
    )


def is_network_failure(err: BaseException) -> bool:
    """True when ``err`` (raised by :func:`download_file`) reports a failed transfer, after which the
    ``.part`` file is kept and a later try resumes; False for a corrupt file, a full disk, a bad folder."""
    return isinstance(err.__cause__, (urllib.error.URLError, http.client.HTTPException, OSError))


def _disk_error(part: Path, err: OSError, wording: Wording) -> TextSamError:
    """A write failed (disk full, ...): not a network problem, so not retried as one."""
    return wording.error(
        f"cannot write {part}: {err.strerror or err}. Free some space in {part.parent}, or {wording.elsewhere}, "
        "and run the command again: the part already downloaded is kept and resumed."
    )


# --------------------------------------------------------------------------------------------------
# The download


def download_file(remote: RemoteFile, dest: Path, *, progress: bool = True, wording: Wording = Wording()) -> str:
    """Stream ``remote.url`` into ``dest`` via ``<dest>.part`` (resumed when present); return the sha256.

    The ``.part`` file is checked (size, sha256) and renamed to ``dest`` only when it matches; a mismatch
    deletes it. A network failure raises ``wording.error`` and keeps the ``.part`` for the next try.
    """
    dest = Path(dest)
    check_writable(dest, wording)
    part = part_path(dest)
    for attempt in range(2):
        offset = part.stat().st_size if part.exists() else 0
        if remote.size is not None and offset > remote.size:
            logger.warning("Partial file %s is larger than expected; restarting", part)
            part.unlink()
            offset = 0
        try:
            if remote.size is not None and offset == remote.size:
                hasher = hashlib.sha256()
                with open(part, "rb") as f:
                    _hash_stream(f, hasher)
            else:
                hasher = _fetch(remote, part, offset, progress=progress, wording=wording)
        except urllib.error.HTTPError as err:
            if err.code == 416 and offset and attempt == 0:  # our Range is past the end: restart
                logger.warning("Server refused to resume %s; restarting", part)
                part.unlink()
                continue
            raise network_error(remote, dest, err, wording) from err
        except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
            raise network_error(remote, dest, err, wording) from err
        break
    digest = hasher.hexdigest()
    _finish(remote, part, dest, digest, wording)
    return digest


def _fetch(remote: RemoteFile, part: Path, offset: int, *, progress: bool, wording: Wording) -> hashlib._Hash:
    """One HTTP request: append to ``part`` from ``offset`` (HTTP 206) or rewrite it (HTTP 200)."""
    from tqdm.auto import tqdm  # here, so that importing the table modules (and the CLI) stays cheap

    request = urllib.request.Request(remote.url, headers={"User-Agent": "textsam"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    hasher = hashlib.sha256()
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
        status = getattr(response, "status", None) or response.getcode()
        if offset and status == 206:
            logger.info("Resuming %s at byte %d", remote.name, offset)
            with open(part, "rb") as f:
                _hash_stream(f, hasher)
            mode = "ab"
        else:
            if offset:
                logger.info("Server ignored the Range request for %s; restarting", remote.name)
            offset, mode = 0, "wb"
        length = response.headers.get("Content-Length") if response.headers else None
        total = offset + int(length) if length and length.isdigit() else remote.size
        with (
            _open_part(part, mode, wording) as f,
            tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                 desc=part.name.removesuffix(".part"), disable=not progress, leave=False) as bar,
        ):
            while chunk := response.read(CHUNK_SIZE):
                hasher.update(chunk)
                _write_all(f, chunk, part, wording)
                bar.update(len(chunk))
    received = part.stat().st_size
    if total is not None and received < total:
        raise http.client.IncompleteRead(b"", total - received)
    return hasher


def _open_part(part: Path, mode: str, wording: Wording) -> BinaryIO:
    """``part`` opened unbuffered, so that a failing write (disk full) raises at once, from :func:`_write_all`."""
    try:
        return open(part, mode, buffering=0)  # noqa: SIM115 - closed by the caller's with-block
    except OSError as err:
        raise _disk_error(part, err, wording) from None


def _write_all(f: BinaryIO, data: bytes, part: Path, wording: Wording) -> None:
    view = memoryview(data)
    try:
        while view:
            written = f.write(view)
            if not written:  # nothing taken: the disk is full
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            view = view[written:]
    except OSError as err:
        raise _disk_error(part, err, wording) from None


def _finish(remote: RemoteFile, part: Path, dest: Path, digest: str, wording: Wording) -> None:
    """Check size and hash of the finished ``part``; rename it to ``dest`` or delete it."""
    actual = part.stat().st_size
    if remote.size is not None and actual != remote.size:
        part.unlink()
        raise wording.error(
            f"Download of {remote.name!r} from {remote.url} has the wrong size: expected {remote.size} "
            f"bytes, got {actual}. The partial file was deleted; try again."
        )
    if remote.sha256 is not None and digest != remote.sha256.lower():
        part.unlink()
        raise wording.error(
            f"Download of {remote.name!r} from {remote.url} is corrupt: expected sha256 "
            f"{remote.sha256}, got {digest}. The file was deleted; try again."
        )
    os.replace(part, dest)

"""Unpacking a downloaded zip archive into a folder, safely and resumably.

Every member name is checked before anything is written: an absolute name, a drive letter, a ``..``
part, a symbolic link, or a name that resolves (through links already on disk) outside ``root`` is
refused and nothing is unpacked. Each member is written to ``<member>.part`` and renamed when complete
(zipfile checks its CRC while reading), so a killed unpack never leaves a truncated file under a final
name; unpacking again skips members already there with the right size and writes the rest.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath

from ..errors import DownloadError

__all__ = ["unpack_zip", "member_targets"]

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20


def _unsafe(name: str) -> str | None:
    """Why a member name may not be unpacked, or ``None`` when it is a plain relative path."""
    posix = name.replace("\\", "/")
    if posix.startswith("/") or (len(posix) > 1 and posix[1] == ":"):
        return "is an absolute path"
    if any(part == ".." for part in PurePosixPath(posix).parts):
        return "climbs out with '..'"
    return None


def member_targets(zf: zipfile.ZipFile, into: Path, root: Path) -> list[tuple[zipfile.ZipInfo, Path]]:
    """``(member, target path)`` for every member of ``zf`` unpacked into ``into`` (inside ``root``).

    Raises :class:`DownloadError` naming the first member that would land outside ``root`` (absolute
    name, ``..``, a symbolic link member, or an existing link on disk that leads out).
    """
    root_real = Path(os.path.realpath(root))
    out = []
    for info in zf.infolist():
        why = _unsafe(info.filename)
        if why is None and stat.S_ISLNK(info.external_attr >> 16):
            why = "is a symbolic link"
        target = into / info.filename.replace("\\", "/")
        if why is None and not Path(os.path.realpath(target)).is_relative_to(root_real):
            why = f"would be written outside {root}"
        if why is not None:
            raise DownloadError(
                f"{zf.filename}: member {info.filename!r} {why}; the archive is refused and nothing was unpacked. "
                "Delete it and download it again from the official source."
            )
        out.append((info, target))
    return out


def unpack_zip(archive: Path, into: Path, *, root: Path) -> int:
    """Unpack ``archive`` into ``into`` (a folder inside ``root``); return the number of files it holds.

    Members already present with their stored size are kept (an interrupted unpack resumes); the others
    are written through ``<target>.part``. Raises :class:`DownloadError` for an unsafe member name or a
    damaged archive.
    """
    try:
        with zipfile.ZipFile(archive) as zf:
            members = member_targets(zf, into, root)
            files = 0
            for info, target in members:
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                files += 1
                if target.is_file() and target.stat().st_size == info.file_size:
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                part = target.with_name(target.name + ".part")
                with zf.open(info) as src, open(part, "wb") as dst:
                    shutil.copyfileobj(src, dst, _CHUNK)
                os.replace(part, target)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as err:
        raise DownloadError(f"{archive} is not a readable zip archive ({err}): delete it and download it "
                            "again.") from None
    logger.info("Unpacked %s (%d files) into %s", archive, files, into)
    return files

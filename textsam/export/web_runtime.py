"""The browser page's JavaScript runtime: onnxruntime-web from the npm registry, pinned and checked.

The page runs its ONNX graphs with onnxruntime-web's WebAssembly back end. ``textsam export --web`` copies the
three files it needs out of the npm package (version :data:`ORT_WEB_VERSION`, tarball sha256
:data:`ORT_WEB.sha256`) into the exported folder, so the page loads nothing from anywhere else:

- ``ort.wasm.min.js``: the library (sets ``window.ort``);
- ``ort-wasm-simd-threaded.mjs`` and ``ort-wasm-simd-threaded.wasm``: the WebAssembly kernels and their loader;
- ``onnxruntime-web.package.json``: the package's own description (its MIT licence).

The tarball is downloaded once into ``$TEXTSAM_HOME/web/`` (default ``~/.cache/textsam/web/``) with the
project's downloader (resumable, size- and sha256-checked), or taken from a file the user gives
(``--web-runtime FILE.tgz``, e.g. from ``npm pack onnxruntime-web@1.22.0`` on a machine with network).
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

from ..download import (
    RemoteFile,
    Wording,
    download_file,
    is_offline,
    offline_reason,
    sha256_file,
    textsam_home,
)
from ..errors import DownloadError, InputError

__all__ = ["ORT_WEB_VERSION", "ORT_WEB", "RUNTIME_FILES", "runtime_cache_path", "fetch_runtime", "vendor_runtime"]

ORT_WEB_VERSION = "1.22.0"
ORT_WEB = RemoteFile(
    name=f"onnxruntime-web {ORT_WEB_VERSION}",
    url=f"https://registry.npmjs.org/onnxruntime-web/-/onnxruntime-web-{ORT_WEB_VERSION}.tgz",
    size=20387966,
    sha256="e293551f9d36d003e293d0f2937fee7b3dfdcef76d71d1449b55e2d4157c7aea",
)
# the files of the npm package the page needs (paths inside the tarball -> names in the exported folder)
RUNTIME_FILES = {
    "package/dist/ort.wasm.min.js": "ort.wasm.min.js",
    "package/dist/ort-wasm-simd-threaded.mjs": "ort-wasm-simd-threaded.mjs",
    "package/dist/ort-wasm-simd-threaded.wasm": "ort-wasm-simd-threaded.wasm",
    "package/package.json": "onnxruntime-web.package.json",  # its licence (MIT) and provenance

}
_WORDING = Wording(error=DownloadError, noun="onnxruntime-web package", folder="the textsam cache",
                   elsewhere="set TEXTSAM_HOME to a folder you can write to")


def runtime_cache_path() -> Path:
    """Where the pinned tarball is kept: ``web/onnxruntime-web-<version>.tgz`` in textsam's cache folder
    (:func:`~textsam.download.textsam_home`)."""
    return textsam_home() / "web" / f"onnxruntime-web-{ORT_WEB_VERSION}.tgz"


def fetch_runtime(source: str | Path | None = None, *, progress: bool = True) -> Path:
    """The checked tarball: ``source`` when given (its sha256 must be the pinned one), else the cached copy,
    downloading it first when it is missing (raises :class:`DownloadError` offline, saying what to do)."""
    if source is not None:
        path = Path(source).expanduser()
        if not path.is_file():
            raise InputError(f"{path} does not exist: give the onnxruntime-web {ORT_WEB_VERSION} tarball "
                             f"(npm pack onnxruntime-web@{ORT_WEB_VERSION})")
        digest = sha256_file(path)
        if digest != ORT_WEB.sha256:
            raise InputError(f"{path} is not onnxruntime-web {ORT_WEB_VERSION} (sha256 {digest[:12]}..., expected "
                             f"{ORT_WEB.sha256[:12]}...): use npm pack onnxruntime-web@{ORT_WEB_VERSION}")
        return path
    dest = runtime_cache_path()
    if dest.is_file() and sha256_file(dest) == ORT_WEB.sha256:
        return dest
    if is_offline():
        raise DownloadError(f"onnxruntime-web {ORT_WEB_VERSION} is not in {dest.parent} and downloads are off "
                            f"{offline_reason()}. On a machine with network run `npm pack onnxruntime-web@"
                            f"{ORT_WEB_VERSION}` and pass the file with --web-runtime FILE.tgz.")
    download_file(ORT_WEB, dest, progress=progress, wording=_WORDING)
    return dest


def vendor_runtime(out_dir: Path, source: str | Path | None = None) -> dict:
    """Copy :data:`RUNTIME_FILES` out of the checked tarball into ``out_dir``; returns what was vendored
    (version, tarball URL and sha256, and each file's sha256), which the export writes to ``VENDOR.json``."""
    tarball = fetch_runtime(source)
    files = {}
    with tarfile.open(tarball, "r:gz") as tar:
        for inner, name in RUNTIME_FILES.items():
            member = tar.getmember(inner)
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
            (out_dir / name).write_bytes(data)
            files[name] = hashlib.sha256(data).hexdigest()
    info = {"package": "onnxruntime-web", "version": ORT_WEB_VERSION, "tarball": ORT_WEB.url,
            "tarball_sha256": ORT_WEB.sha256, "files": files}
    (out_dir / "VENDOR.json").write_text(json.dumps(info, indent=2) + "\n")
    return info

"""``textsam app --static DIR``: serve an exported browser page (``textsam export --web DIR``) as plain files.

The page does all the work in the browser; this server only sends the folder's files. It adds the two headers
that make a page cross-origin isolated (``Cross-Origin-Opener-Policy: same-origin``,
``Cross-Origin-Embedder-Policy: require-corp``), which lets onnxruntime-web run its WebAssembly kernels on
several threads; any other static server works too, with one thread. No torch is loaded.
"""

from __future__ import annotations

import functools
import http.server
import logging
from pathlib import Path

from textsam.errors import InputError

from .serving import check_address

logger = logging.getLogger(__name__)

__all__ = ["StaticHandler", "static_server", "serve_until_stopped"]

TYPES = {".wasm": "application/wasm", ".mjs": "text/javascript", ".js": "text/javascript", ".onnx": "application/octet-stream",
         ".json": "application/json", ".gz": "application/octet-stream"}


class StaticHandler(http.server.SimpleHTTPRequestHandler):
    """Files of one folder, with the cross-origin isolation headers; no directory listings."""

    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, **TYPES}

    def end_headers(self) -> None:
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def list_directory(self, path):  # noqa: ANN001, ANN201 - http.server's signature
        self.send_error(404, "no listing")
        return None

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's signature
        logger.debug("%s %s", self.address_string(), format % args)


def _check_folder(folder: str | Path) -> Path:
    folder = Path(folder).expanduser()
    if not (folder / "manifest.json").is_file() or not (folder / "index.html").is_file():
        raise InputError(f"{folder} is not an exported page (no manifest.json and index.html): write one with "
                         f"`textsam export --web {folder}`")
    return folder


def static_server(folder: str | Path, host: str = "127.0.0.1", port: int = 0) -> http.server.ThreadingHTTPServer:
    """A server for ``folder`` bound to ``host:port`` (0: any free port; ``server.server_port`` says which), not
    yet serving: call ``serve_forever()`` (e.g. on a thread) and ``shutdown()``."""
    folder = _check_folder(folder)
    if port:
        check_address(host, port)
    handler = functools.partial(StaticHandler, directory=str(folder))
    return http.server.ThreadingHTTPServer((host, port), handler)


def serve_until_stopped(server: http.server.ThreadingHTTPServer) -> None:
    """Serve until Ctrl-C or SIGTERM, then close the socket."""
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        logger.info("stopped")
    finally:
        server.server_close()

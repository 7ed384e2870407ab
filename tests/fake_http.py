"""A stand-in for ``urllib.request.urlopen``'s response, for the download tests (weights and datasets)."""

from __future__ import annotations


class FakeResponse:
    """Enough of ``http.client.HTTPResponse``: status, headers (``Content-Length``: ``length``, default the body's),
    a chunked ``read`` (at most ``chunk`` bytes a call) that raises a connection reset once ``fail_after`` bytes
    were read, and a context manager."""

    def __init__(self, body: bytes, status: int = 200, fail_after: int | None = None, chunk: int = 1000, *,
                 length: int | None = None) -> None:
        self.body, self.status, self.fail_after, self.chunk, self.pos = body, status, fail_after, chunk, 0
        self.headers = {"Content-Length": str(len(body) if length is None else length)}

    def getcode(self) -> int:
        return self.status

    def read(self, n: int = -1) -> bytes:
        if self.fail_after is not None and self.pos >= self.fail_after:
            raise ConnectionResetError(104, "Connection reset by peer")
        data = self.body[self.pos : self.pos + min(n if n > 0 else self.chunk, self.chunk)]
        self.pos += len(data)
        return data

    def __enter__(self) -> FakeResponse:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def no_network(*args: object, **kwargs: object) -> None:
    """``urlopen`` for tests that must not touch the network."""
    raise AssertionError("the network must not be touched")

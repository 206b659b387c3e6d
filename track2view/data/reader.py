"""Reading the samples of a `SampleIndex` (shards.py): one positioned read per member the batch needs."""

from __future__ import annotations

import os

from track2view.data.shards import SampleIndex
from track2view.data.stats import BadSample
from track2view.data.tars import local_path, open_shard


class SampleReader:
    """Reads indexed samples (one reader per DataLoader worker: it keeps up to `max_open` shards open)."""

    def __init__(self, index: SampleIndex, allow_pipe_urls: bool = False, max_open: int = 8):
        self.index, self.allow_pipe_urls, self.max_open = index, allow_pipe_urls, max_open
        self._open: dict[int, _Handle] = {}

    def read(self, i: int) -> dict:
        """The raw sample i {'__key__', '__url__', member: bytes} (members it lacks are absent); BadSample
        ('unreadable_shard') for a lost sample or a shard that changed since it was indexed."""
        ix = self.index
        s, key = int(ix.shard[i]), ix.keys[i]
        url = ix.urls[s]
        if ix.lost[i]:
            raise BadSample("unreadable_shard", f"{key} ({url}) is lost: {ix.problems.get(s, 'damaged shard')}")
        raw = {"__key__": key, "__url__": url}
        for m, (offset, size) in zip(ix.members, ix.extents[i].tolist()):
            if size >= 0:
                raw[m] = self.read_at(s, offset, size)
        return raw

    def read_at(self, s: int, offset: int, size: int) -> bytes:
        try:
            handle = self._handle(s)
            data = handle.read_at(offset, size)
        except OSError as e:
            self._close(s)
            raise BadSample("unreadable_shard", f"{self.index.urls[s]}: {e!r}") from e
        if len(data) != size:
            self._close(s)
            raise BadSample("unreadable_shard", f"{self.index.urls[s]}: {size - len(data)} bytes missing at byte "
                                                f"{offset} (the shard changed or was cut after it was indexed)")
        return data

    def _handle(self, s: int) -> "_Handle":
        if s not in self._open:
            while len(self._open) >= self.max_open:
                self._close(next(iter(self._open)))
            self._open[s] = _Handle(self.index.urls[s], self.allow_pipe_urls)
        return self._open[s]

    def _close(self, s: int) -> None:
        handle = self._open.pop(s, None)
        if handle is not None:
            handle.close()

    def close(self) -> None:
        while self._open:
            self._close(next(iter(self._open)))

    def __enter__(self) -> "SampleReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Handle:
    """Positioned reads on a shard: os.pread on a local file; a forward-only stream otherwise (reopened when a
    read lies behind it, so random access to a pipe: shard costs a re-read)."""

    def __init__(self, url: str, allow_pipe_urls: bool):
        self.url, self.allow_pipe_urls = url, allow_pipe_urls
        path = local_path(url)
        self.fd = os.open(path, os.O_RDONLY) if path is not None else None
        self.stream, self.pos = None, 0

    def read_at(self, offset: int, size: int) -> bytes:
        if self.fd is not None:
            return os.pread(self.fd, size, offset)
        if self.stream is None or self.pos > offset:
            if self.stream is not None:
                self.stream.close()
            self.stream, self.pos = open_shard(self.url, self.allow_pipe_urls), 0
        while self.pos < offset:
            if not self._read(min(offset - self.pos, 1 << 20)):
                return b""
        parts = []
        while size > 0 and (part := self._read(size)):
            parts.append(part)
            size -= len(part)
        return b"".join(parts)

    def _read(self, n: int) -> bytes:
        data = self.stream.read(n)
        self.pos += len(data)
        return data

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.stream is not None:
            self.stream.close()
            self.stream = None

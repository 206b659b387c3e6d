"""Tar shards read strictly, and their members grouped into samples as webdataset groups them.

A shard is a tar of members `<key>.<member>` (webdataset's `base_plus_ext`; member names lower-cased); the
members of one key are one sample. Two readers share one strict walk over the tar headers (tarwalk.py), which
makes every structural problem an error: Python's tarfile (and so webdataset) ends the archive silently at a
corrupt header or a file cut between members, and the samples after it vanish uncounted.

* `scan_tar(url)`: headers only (the data of a local file is seeked over): the samples in file order with the
  byte extents of their members, the duplicates dropped, and where and why the shard breaks off. The loader's
  index (shards.py) is built from it.
* `read_tar(url)`: the samples with their bytes, in order (precompute, tests); a shard that breaks off yields
  the samples completed before the break, then raises `ShardReadError`.

Duplicates (both readers): a member name repeated within a sample, or a key that comes back after another key,
keeps its first occurrence; the later one is dropped and reported (webdataset raises on the first, ending the
shard, and yields the second as another sample). The sample being read when the shard breaks off is dropped
and reported as `partial`.

URLs: a local path (or `file:PATH`) is opened directly. `pipe:CMD` runs CMD in a shell (webdataset's gopen) and
is refused unless `allow_pipe_urls`; other schemes (http:, gs:, ...) are read through gopen as streams.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from webdataset.tariterators import base_plus_ext

from track2view.data.tarwalk import DataCut, TarSource, walk

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")
_META = re.compile(r"__[^/]*__($|/)")  # webdataset's metadata members, never part of a sample


class ShardReadError(OSError):
    """A shard that cannot be read to its end; the message names the shard, the byte and the problem."""


# ---- URLs ---------------------------------------------------------------------------------------------------
def url_scheme(url: str) -> str | None:
    """'pipe' for 'pipe:cmd', 'http' for 'http://...', None for a plain path (one-letter schemes: drive letters)."""
    m = _SCHEME.match(str(url))
    return m.group(1).lower() if m else None


def local_path(url: str) -> str | None:
    """The file path of a local shard URL (a plain path or file:PATH), None for any other URL."""
    scheme = url_scheme(url)
    if scheme is None:
        return str(url)
    if scheme == "file":
        return re.sub(r"^file:(//)?", "", str(url))
    return None


def check_url(url: str, allow_pipe_urls: bool = False) -> None:
    """Refuse a `pipe:` URL (a shell command) unless the user allowed such URLs explicitly."""
    if url_scheme(url) == "pipe" and not allow_pipe_urls:
        raise ValueError(f"shard URL {str(url)[:80]!r} is a pipe: URL, which runs everything after 'pipe:' as a shell "
                         f"command; pass --allow-pipe-urls (data.allow_pipe_urls: true) if you mean to run it")


def open_shard(url: str, allow_pipe_urls: bool = False):
    """A binary file object on the shard: seekable for a local file, a forward-only stream otherwise."""
    path = local_path(url)
    if path is not None:
        return open(path, "rb")
    check_url(url, allow_pipe_urls)
    from webdataset.gopen import gopen

    return gopen(url, "rb")


# ---- the walk ------------------------------------------------------------------------------------------------
def _members(f, url: str):
    """(name, data offset, size, read) of the shard's regular members with a sample key (tarwalk.walk)."""
    for name, offset, size, read in walk(TarSource(f, seekable=local_path(url) is not None)):
        if not _META.match(name):
            yield name, offset, size, read


@dataclass
class _Grouper:
    """Members -> samples: consecutive members of one key; duplicates dropped and recorded."""
    duplicates: list[str] = field(default_factory=list)
    key: str | None = None
    members: dict = field(default_factory=dict)
    dropping: bool = False
    seen: set = field(default_factory=set)
    last: frozenset = frozenset()  # the members of the last complete sample

    def add(self, name: str, payload) -> tuple[str, dict] | None:
        """Add member `name`; return the sample this member completes (the previous key's), if any."""
        key, ext = base_plus_ext(name)
        if key is None:
            return None
        done = None
        if key != self.key:
            done = self.finish()
            self.key, self.members, self.dropping = key, {}, key in self.seen
            if self.dropping:
                self.duplicates.append(key)
            self.seen.add(key)
        ext = ext.lower()
        if self.dropping:
            return done
        if ext in self.members:
            self.duplicates.append(f"{key}.{ext}")
        elif payload is not None:
            self.members[ext] = payload
        return done

    def finish(self) -> tuple[str, dict] | None:
        done = None if self.key is None or self.dropping else (self.key, self.members)
        if done:
            self.last = frozenset(self.members)
        self.key, self.members, self.dropping = None, {}, False
        return done

    def partial(self) -> str | None:
        return None if self.dropping else self.key

    def break_at(self, error: Exception) -> tuple[tuple[str, dict] | None, str | None]:
        """At a break: (the sample in progress if it is complete, else None; the key of the partial one, or None).
        Complete: the break is in a header (the data before it is whole) and the sample has every member the
        previous sample had, as when a shard is cut between samples."""
        whole = not isinstance(error, DataCut) and self.last and self.last <= set(self.members)
        if whole and self.key is not None and not self.dropping:
            return self.finish(), None
        return None, self.partial()


# ---- the two readers ----------------------------------------------------------------------------------------
@dataclass
class ShardScan:
    """What a header walk found in one shard."""
    url: str
    samples: list[tuple[str, dict[str, tuple[int, int]]]]  # (key, {member: (data offset, size)}) in file order
    duplicates: list[str]  # dropped duplicates: 'key' (a repeated sample) or 'key.member'
    partial: str | None = None  # the sample the break cut (dropped)
    error: str | None = None  # why the shard breaks off; None: read to its end-of-archive marker


def scan_tar(url: str, allow_pipe_urls: bool = False) -> ShardScan:
    """Walk the headers of one shard (see the module docstring); never raises for what the shard holds."""
    check_url(url, allow_pipe_urls)
    grouper, samples, error = _Grouper(), [], None
    try:
        with open_shard(url, allow_pipe_urls) as f:
            for name, offset, size, _ in _members(f, url):
                done = grouper.add(name, (offset, size))
                if done:
                    samples.append(done)
    except Exception as e:  # TarError, OSError (missing, unreadable, I/O error), a failing pipe
        error, (done, partial) = f"{type(e).__name__}: {e}", grouper.break_at(e)
    else:
        done, partial = grouper.finish(), None
    if done:
        samples.append(done)
    return ShardScan(url, samples, grouper.duplicates, partial, error)


def read_tar(url: str, select_files=None, allow_pipe_urls: bool = False, duplicates: list | None = None):
    """Raw samples {'__key__', '__url__', member: bytes} of one shard, in order (members filtered by
    `select_files(name)`, default all); dropped duplicates are appended to `duplicates`. A shard that breaks
    off yields the samples completed before the break, drops the partial one and raises ShardReadError."""
    check_url(url, allow_pipe_urls)
    grouper = _Grouper()

    def sample(done):
        return {"__key__": done[0], "__url__": url, **done[1]}

    try:
        with open_shard(url, allow_pipe_urls) as f:
            for name, _, _, read in _members(f, url):
                done = grouper.add(name, read() if select_files is None or select_files(name) else None)
                if done:
                    yield sample(done)
    except Exception as e:
        raise ShardReadError(f"{url}: {type(e).__name__}: {e} (it breaks off in sample {grouper.partial()!r}; "
                             f"the samples before it were read)") from e
    finally:
        if duplicates is not None:
            duplicates.extend(grouper.duplicates)
    done = grouper.finish()
    if done:
        yield sample(done)

"""Atomic file and directory writes, and video read/write (PyAV).

Every file this project writes goes through `atomic_path`, every output directory through
`atomic_directory`: the content is written to a temporary sibling and renamed into place, so an interrupted
job never leaves a half-written output behind. Temporary names carry the PID and a random part, so writers
in different containers sharing a file system never collide.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import time
import uuid
from fractions import Fraction
from pathlib import Path

import numpy as np


class VideoError(ValueError):
    """A video that cannot be read; the message names the file and the problem."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{_unique()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _unique() -> str:
    return f"{os.getpid()}-{uuid.uuid4().hex[:8]}"


_TEMP = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old)\d+-[0-9a-f]{8}")  # what _unique() names (atomic_path, ...)


def remove_stale_temps(directory: str | os.PathLike, names=None, min_age_s: float = 0.0) -> list[Path]:
    """Remove the temporaries that killed writers of `atomic_path` / `atomic_directory` / `replace_directory`
    left in `directory` (`.NAME.tmpPID-RANDOM...`, `.NAME.oldPID-RANDOM`); return what was removed.

    names: only the temporaries of these output names (e.g. the shards this process alone writes), so that a
    live writer of another name is never disturbed; None: all. min_age_s: only those untouched for that long (for
    outputs that several processes may write). Files and directories of other names are never touched.
    """
    directory, wanted = Path(directory), None if names is None else set(names)
    if not directory.is_dir():
        return []
    removed, now = [], time.time()
    for entry in directory.iterdir():
        m = _TEMP.match(entry.name)
        if not m or (wanted is not None and m["name"] not in wanted):
            continue
        try:
            if now - entry.lstat().st_mtime < min_age_s:
                continue
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
            removed.append(entry)
        except FileNotFoundError:  # its writer finished (or another cleaner was first)
            continue
    return removed


def check_disjoint(inputs, output: str | os.PathLike, input_what: str = "the input",
                   output_what: str = "the output") -> None:
    """Raise ValueError when the output directory is an input's directory, lies inside one or holds one (symlinks
    resolved), so that a command never writes over or among what it reads.

    inputs: the input paths (files or directories); a file stands for its directory.
    """
    out = Path(output).resolve()
    for item in inputs:
        path = Path(item).resolve()
        root = path if path.is_dir() else path.parent
        if out == root or root in out.parents or out in root.parents:
            relation = "is" if out == root else "lies inside" if root in out.parents else "holds"
            raise ValueError(f"{output_what} {output} {relation} the directory of {input_what} ({root}); it would "
                             f"write over or among what it reads: give {output_what} that is neither {root} nor "
                             f"inside or above it")


OUTPUT_MARKER = ".track2view-output"  # names the kind of output a directory is: only such a directory is replaced


def check_replaceable(path: str | os.PathLike, kind: str) -> None:
    """Raise FileExistsError unless `path` is absent or a previous output of `kind` (see `atomic_directory`)."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    marker = path / OUTPUT_MARKER
    found = marker.read_text().strip() if path.is_dir() and marker.is_file() else None
    if found != kind:
        what = f"a {found} output" if found else ("a file" if not path.is_dir() else "a directory this command did "
                                                                                     "not write")
        raise FileExistsError(f"{path} exists and is {what}; it is never replaced. Choose a new output path "
                              f"(or delete it yourself)")


def replace_directory(src: str | os.PathLike, dst: str | os.PathLike, kind: str) -> Path:
    """Mark directory `src` as an output of `kind` and move it onto `dst` (absent, or an output of `kind`).

    The previous `dst` is kept under a hidden name until the new one is in place, then removed.
    """
    src, dst = Path(src), Path(dst)
    check_replaceable(dst, kind)
    (src / OUTPUT_MARKER).write_text(kind + "\n")
    old = dst.with_name(f".{dst.name}.old{_unique()}")
    if dst.exists():
        os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)
    return dst


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, kind: str):
    """Yield a fresh temporary sibling directory; move it onto `path` only if the block succeeds.

    `kind` names the output (e.g. "export"): an existing `path` is replaced only when it is a previous output of
    the same kind, so that pointing a command at a user's folder or a model directory never deletes it. The
    check runs before the block, so a refused run does no work.
    """
    path = Path(path)
    check_replaceable(path, kind)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{_unique()}")
    tmp.mkdir()
    try:
        yield tmp
        replace_directory(tmp, path, kind)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | os.PathLike, obj, indent: int | None = 1, sort_keys: bool = False) -> Path:
    """Write `obj` as JSON to `path`, atomically (see `atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent, sort_keys=sort_keys))
    return Path(path)


def read_video(path: str | os.PathLike | bytes, max_frames: int | None = None) -> tuple[np.ndarray, float]:
    """Decode a video (a file, or its bytes, e.g. a shard member) to RGB frames [T, H, W, 3] uint8 and return
    (frames, fps).

    Raises VideoError (with the path and the reason) for a missing file, a container or codec PyAV
    cannot decode, or a file without video frames.
    """
    import av
    from av.video.reformatter import VideoReformatter

    if isinstance(path, (bytes, bytearray, memoryview)):
        source, path = io.BytesIO(path), Path("<video bytes>")
    else:
        path = Path(path)
        if not path.is_file():
            raise VideoError(f"video not found: {path}")
        source = str(path)
    frames = []
    try:
        with av.open(source) as container:
            if not container.streams.video:
                raise VideoError(f"{path} has no video stream")
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 0) or 30.0
            # one converter for the whole video: `frame.to_ndarray(format=...)` sets one up per frame, which took
            # ~4 ms of a 128 px frame's ~5 (the same pixels; curation spent 88% of its time there)
            to_rgb = VideoReformatter()
            for frame in container.decode(stream):
                frames.append(to_rgb.reformat(frame, format="rgb24").to_ndarray())
                if max_frames is not None and len(frames) >= max_frames:
                    break
    except VideoError:
        raise
    except Exception as e:  # PyAV raises several error types (InvalidDataError, DecoderNotFound, ...)
        raise VideoError(f"cannot decode {path}: {e}. Convert it to H.264 mp4, e.g. "
                         f"`ffmpeg -i {path.name} -c:v libx264 out.mp4`") from e
    if not frames:
        raise VideoError(f"{path} contains no decodable video frames")
    return np.stack(frames), fps


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float = 16.0, crf: int = 18,
                threads: int = 1) -> Path:
    """Encode RGB frames [T, H, W, 3] (uint8, or float in [0, 1]) as H.264 mp4 (yuv420p), atomically.

    The bytes are a pure function of the frames: libx264's macroblock-tree rate control is off (with it
    on, encoding the same frames twice in one process gave different files, even with one thread), frame
    timestamps are explicit, and one encoder thread is the default. Odd sizes are padded by one edge
    pixel, as yuv420p needs even sizes.
    """
    import av

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [T, H, W, 3], got {frames.shape}")
    if frames.dtype != np.uint8:
        frames = np.clip(np.round(frames * 255.0), 0, 255).astype(np.uint8)
    ph, pw = frames.shape[1] % 2, frames.shape[2] % 2
    if ph or pw:
        frames = np.pad(frames, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
    path = Path(path)
    with atomic_path(path) as tmp:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
            stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
            stream.options = {"crf": str(crf), "threads": str(threads), "x264-params": "mbtree=0"}
            time_base = Fraction(1, 1) / stream.codec_context.framerate
            stream.codec_context.time_base = time_base
            for i, f in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
                frame.pts, frame.time_base = i, time_base
                container.mux(stream.encode(frame))
            container.mux(stream.encode())
    return path

"""Atomic outputs: a directory the project did not write is never replaced; a failed write leaves nothing."""

import pytest

from track2view.io import OUTPUT_MARKER, atomic_directory, read_video, write_video


def test_atomic_directory_replaces_only_an_earlier_output_of_the_same_kind(tmp_path):
    out = tmp_path / "export"
    with atomic_directory(out, "export") as tmp:
        (tmp / "a.txt").write_text("first")
    assert (out / "a.txt").read_text() == "first" and (out / OUTPUT_MARKER).is_file()
    with atomic_directory(out, "export") as tmp:  # an earlier export: replaced
        (tmp / "b.txt").write_text("second")
    assert sorted(p.name for p in out.iterdir()) == [OUTPUT_MARKER, "b.txt"]
    with pytest.raises(FileExistsError, match="export output"):
        with atomic_directory(out, "checkpoint"):
            pass
    assert (out / "b.txt").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no temporary or old copies left


@pytest.mark.parametrize("existing", ["user folder", "file"])
def test_atomic_directory_never_touches_what_it_did_not_write(tmp_path, existing):
    target = tmp_path / "target"
    if existing == "file":
        target.write_text("precious")
    else:
        target.mkdir()
        (target / "precious.txt").write_text("precious")
    ran = []
    with pytest.raises(FileExistsError, match="never replaced"):
        with atomic_directory(target, "export"):
            ran.append(1)
    assert not ran  # refused before any work
    assert (target.read_text() if existing == "file" else (target / "precious.txt").read_text()) == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]


def test_a_failed_write_leaves_no_directory(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_directory(tmp_path / "out", "export") as tmp:
            (tmp / "half.txt").write_text("x")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_video_bytes_decode_like_the_file(tmp_path):
    import numpy as np

    frames = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    path = write_video(tmp_path / "v.mp4", frames, fps=10)
    from_file, fps = read_video(path)
    from_bytes, fps_bytes = read_video(path.read_bytes())
    assert (from_file == from_bytes).all() and fps == fps_bytes == 10


def test_video_decodes_to_the_rgb_of_pyavs_own_per_frame_conversion(tmp_path):
    """read_video converts every frame with one shared converter; the pixels must be PyAV's per-frame ones."""
    import av
    import numpy as np

    rng = np.random.default_rng(1)
    for height, width in [(16, 16), (18, 30)]:
        frames = rng.integers(0, 256, (4, height, width, 3), dtype=np.uint8)
        path = write_video(tmp_path / f"v{height}x{width}.mp4", frames, fps=10)
        with av.open(str(path)) as container:
            expected = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
        decoded, _ = read_video(path)
        assert decoded.shape == expected.shape and (decoded == expected).all()

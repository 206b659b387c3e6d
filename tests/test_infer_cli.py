"""infer.py end to end (subprocesses, tiny random-init Wan, a synthetic scene and the oracle tracker), its
bad-input handling, and the visualizations it writes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from track2view.io import read_video, write_video
from track2view.tracks import PairedTracks
from track2view.inference.visualize import draw_points, resize_nearest, side_by_side, track_colors, track_overlay

ROOT = Path(__file__).resolve().parents[1]
T, H, W = 9, 32, 48
TINY = ["--num-frames", str(T), "--height", str(H), "--width", str(W), "--steps", "2", "--num-queries", "64",
        "--device", "cpu"]


def infer(*args, timeout=240):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(ROOT / "infer.py"), *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=ROOT)



@pytest.fixture(scope="module")
def tracks_file(two_camera_scene, tmp_path_factory):
    """The oracle's TrackingResult of cam01, as `--tracks` reads it."""
    from track2view.inference.reprojection import track_video

    src = two_camera_scene / "videos" / "cam01.mp4"
    frames, _ = read_video(src)
    result = track_video(frames, "oracle", 64, [(str(src), i) for i in range(len(frames))])
    return result.save(tmp_path_factory.mktemp("tracks") / "tracks.npz")


def test_cli_defaults_match_the_library():
    import infer
    from track2view.inference import pipeline
    from track2view.trackers import queries

    args = infer.build_parser().parse_args([])
    assert (args.height, args.width, args.num_frames) == (
        pipeline.DEFAULT_HEIGHT, pipeline.DEFAULT_WIDTH, pipeline.DEFAULT_NUM_FRAMES)
    assert args.num_queries == queries.DEFAULT_NUM_QUERIES


def test_several_trajectories_share_one_run_with_side_by_side_and_overlay(two_camera_scene, tiny_wan_dir, tmp_path):
    out = tmp_path / "out" / "render.mp4"
    r = infer("--video", two_camera_scene / "videos" / "cam01.mp4", "--model", tiny_wan_dir, "--tracker", "oracle",
              "--trajectory", "arc_left", "--amount", 10, "--trajectory", "dolly_in", "--amount", 0.5,
              "--prompt", "a red ball in a room", "--side-by-side", "--overlay", "--out", out, *TINY)
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in out.parent.iterdir())
    assert names == ["render_arc_left.mp4", "render_arc_left_overlay.mp4", "render_arc_left_side_by_side.mp4",
                     "render_dolly_in.mp4", "render_dolly_in_overlay.mp4", "render_dolly_in_side_by_side.mp4"]
    frames, fps = read_video(out.parent / "render_arc_left.mp4")
    assert frames.shape == (T, H, W, 3) and fps == pytest.approx(15.0)  # the source's fps
    sbs, _ = read_video(out.parent / "render_dolly_in_side_by_side.mp4")
    assert sbs.shape == (T, H, 2 * W + 4, 3)
    overlay, _ = read_video(out.parent / "render_dolly_in_overlay.mp4")
    assert overlay.shape == (T, H, 2 * W + 4, 3)


def test_custom_poses_with_precomputed_tracks_a_checkpoint_and_a_crop(two_camera_scene, tracks_file, tiny_wan_dir,
                                                                      tmp_path):
    from track2view.synthetic import load_ground_truth
    from track2view.inference.trajectories import save_poses
    from track2view.model.transformer import Track2ViewTransformer

    export = Track2ViewTransformer.from_pretrained(tiny_wan_dir, conditioning_config={"width": 32, "num_heads": 2},
                                                   lora={"rank": 4, "alpha": 4.0}).save_trained(tmp_path / "export")
    _, _, c2w, _ = load_ground_truth(two_camera_scene)
    poses = save_poses(tmp_path / "cam02.json", np.linalg.inv(c2w[0, 0]) @ c2w[1])
    out = tmp_path / "single.mp4"
    args = [a if a != str(W) else "32" for a in map(str, TINY)]  # 32x48 video -> 32x32 model input (crop)
    r = infer("--video", two_camera_scene / "videos" / "cam01.mp4", "--model", tiny_wan_dir, "--tracks", tracks_file,
              "--poses", poses, "--checkpoint", export, "--save-tracks", "--out", out, *args)
    assert r.returncode == 0, r.stderr
    assert read_video(out)[0].shape == (T, H, 32, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cam02.json", "export", "single.mp4", "single_tracks.npz"]
    with np.load(tmp_path / "single_tracks.npz", allow_pickle=False) as f:
        assert f["uv"].shape == (2, T, 64, 2) and f["valid"].shape == (2, T, 64)
        np.testing.assert_allclose(f["target_c2w"], c2w[1], atol=1e-4)  # the scene's cam02, from the pose file
        assert f["valid"][1].any()


def test_output_names_for_several_trajectories():
    from track2view.inference.rerender import extra_path, output_paths

    out = Path("/x/render.mp4")
    assert output_paths(out, ["arc_left"]) == [out]
    assert [p.name for p in output_paths(out, ["arc_left", "dolly_in", "arc_left"])] == [
        "render_arc_left_1.mp4", "render_dolly_in.mp4", "render_arc_left_2.mp4"]
    assert extra_path(out, "overlay").name == "render_overlay.mp4"


def test_only_the_used_frames_are_decoded(two_camera_scene, tracks_file, tiny_wan_dir, tmp_path, monkeypatch, capsys):
    """A long clip is decoded up to --num-frames only (a long 1080p clip decoded whole can exhaust memory)."""
    import infer
    import track2view.io

    for name in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS"):
        monkeypatch.setenv(name, "error")  # infer.main sets them; restored after the test
    decoded, read_video = [], track2view.io.read_video

    def counting_read_video(*args, **kwargs):  # the real reader, counting the frames it returns
        frames, fps = read_video(*args, **kwargs)
        decoded.append(len(frames))
        return frames, fps

    monkeypatch.setattr(track2view.io, "read_video", counting_read_video)
    write_video(tmp_path / "long.mp4", np.zeros((3 * T, H, H, 3), np.uint8), fps=15)
    # tracks of another aspect ratio: stops right after the video is read, before any model loads
    rc = infer.main(["--video", str(tmp_path / "long.mp4"), "--tracks", str(tracks_file), "--model", str(tiny_wan_dir),
                     "--trajectory", "arc_left", "--out", str(tmp_path / "out.mp4"), *TINY])
    assert rc == 2 and "tracks were computed on" in capsys.readouterr().err
    assert decoded == [T]


def test_list_trajectories():
    r = infer("--list-trajectories")
    assert r.returncode == 0 and "arc_left" in r.stdout and "dolly_in" in r.stdout and "zoom_in=dolly_in" in r.stdout


# ---- bad input: one line `error: ...`, exit 2, no file ---------------------------------------------------
def _bad_inputs(tmp: Path, two_camera_scene: Path, tiny_wan_dir: Path, tracks_file: Path):
    """name -> (extra argv, expected text in the error line)."""
    good = two_camera_scene / "videos" / "cam01.mp4"
    data = good.read_bytes()
    (tmp / "garbage.mp4").write_bytes(b"this is not a video" * 50)
    (tmp / "codec.mp4").write_bytes(data.replace(b"avc1", b"zzzz"))  # a codec tag no decoder knows
    write_video(tmp / "short.mp4", np.zeros((5, H, W, 3), np.uint8), fps=15)
    write_video(tmp / "square.mp4", np.zeros((T, H, H, 3), np.uint8), fps=15)
    (tmp / "shape.json").write_text(json.dumps({"poses": np.zeros((T, 3, 4)).tolist()}))
    nan = np.stack([np.eye(4)] * T)
    nan[3, 0, 3] = np.nan
    np.savez(tmp / "nan.npz", c2w=nan)
    np.savez(tmp / "object_tracks.npz", c2w=np.array([object()], dtype=object))
    (tmp / "dir.mp4").mkdir()
    (tmp / "exists.mp4").write_bytes(b"a user's video")
    (tmp / "a_file").write_text("not a folder")  # (a read-only folder would not stop root, who runs CI)
    traj = ["--trajectory", "arc_left"]
    oracle = ["--tracker", "oracle"]
    return {
        "missing video": (["--video", tmp / "nope.mp4", *traj], "video not found"),
        "unreadable video": (["--video", tmp / "garbage.mp4", *traj], "cannot decode"),
        "unknown codec": (["--video", tmp / "codec.mp4", *traj], "Decoder not found"),
        "too few frames": (["--video", tmp / "short.mp4", *traj], "has 5 frames but --num-frames is 9"),
        "pose shape": (["--video", good, "--poses", tmp / "shape.json"], "shape [T, 4, 4], got [9, 3, 4]"),
        "pose non-finite": (["--video", good, "--poses", tmp / "nan.npz"], "non-finite"),
        "unknown trajectory": (["--video", good, "--trajectory", "spin"], "unknown trajectory 'spin'; valid: arc_down"),
        "no valid target track": (["--video", good, *oracle, "--trajectory", "pan_right", "--amount", 180,
                                   "--mode", "direct"], "no track is valid in the target view"),
        "bad tracks file": (["--video", good, *traj, "--tracks", tmp / "object_tracks.npz"], "plain-array npz"),
        "tracks of another video": (["--video", tmp / "square.mp4", *traj, "--tracks", tracks_file],
                                    "tracks were computed on 32x48 frames but the video is 32x32"),
        "unknown tracker": (["--video", good, *traj, "--tracker", "cotracker"], "unknown tracker 'cotracker'"),
        "tracker not set up": (["--video", good, *traj, "--tracker", "spatialtracker_v2"], "needs repo_dir"),
        "bad tracker option": (["--video", good, *traj, *oracle, "--tracker-option", "colour=red"], "colour"),
        "malformed tracker option": (["--video", good, *traj, *oracle, "--tracker-option", "colour"],
                                     "--tracker-option takes KEY=VALUE"),
        "missing checkpoint": (["--video", good, *traj, "--checkpoint", tmp / "nope"], "is not a directory"),
        "not a checkpoint": (["--video", good, *traj, *oracle, "--checkpoint", tmp], "is not a Track2View export"),
        "amount count": (["--video", good, *traj, "--trajectory", "dolly_in", "--amount", 1, "--amount", 2,
                          "--amount", 3], "one per --trajectory"),
        "not a model": (["--video", good, *traj, "--model", tmp], "not a diffusers model directory"),
        "bogus device": (["--video", good, *traj, *oracle, "--device", "bogus"], "--device 'bogus' is not a device"),
        "absent cuda": (["--video", good, *traj, *oracle, "--device", "cuda:7"], "no such CUDA device"),
        "nan guidance": (["--video", good, *traj, *oracle, "--guidance", "nan"], "--guidance must be a finite"),
        "too many queries": (["--video", good, *traj, *oracle, "--num-queries", 2000000], "--num-queries must be in"),
        "tracker option with tracks": (["--video", good, *traj, "--tracks", tracks_file, "--tracker-option", "a=b"],
                                       "--tracker-option applies to the tracker, which --tracks skips"),
        "out is a directory": (["--video", good, *traj, *oracle, "--out", tmp / "dir.mp4"], "is a directory"),
        "out exists": (["--video", good, *traj, *oracle, "--out", tmp / "exists.mp4"],
                       "exists; pass --overwrite"),
        "out not writable": (["--video", good, *traj, *oracle, "--out", tmp / "a_file" / "x.mp4"],
                             "not a writable folder"),
    }


BAD = ["missing video", "unreadable video", "unknown codec", "too few frames", "pose shape", "pose non-finite",
       "unknown trajectory", "no valid target track", "bad tracks file", "tracks of another video",
       "unknown tracker", "tracker not set up", "bad tracker option", "malformed tracker option",
       "missing checkpoint", "not a checkpoint", "amount count", "not a model", "bogus device", "absent cuda",
       "nan guidance", "too many queries", "tracker option with tracks", "out is a directory", "out exists",
       "out not writable"]


@pytest.mark.parametrize("case", BAD)
def test_bad_input_exits_2_with_one_error_line_and_no_file(case, two_camera_scene, tiny_wan_dir, tracks_file, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    cases = _bad_inputs(inputs, two_camera_scene, tiny_wan_dir, tracks_file)
    assert set(cases) == set(BAD)
    argv, expected = cases[case]
    out_dir = tmp_path / "out"
    argv = ["--model", tiny_wan_dir, *argv] if "--model" not in argv else argv
    argv = [*argv, "--out", out_dir / "out.mp4"] if "--out" not in argv else argv
    tiny = [a for pair in zip(TINY[::2], TINY[1::2]) if pair[0] not in argv for a in pair]  # the case's flags win
    r = infer(*argv, *tiny)
    assert r.returncode == 2, (r.stdout, r.stderr)
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and r.stderr.strip().splitlines()[-1] == errors[0], r.stderr
    assert expected in errors[0], errors[0]
    assert "Traceback" not in r.stderr
    assert not out_dir.exists() or not any(out_dir.iterdir())
    assert (inputs / "exists.mp4").read_bytes() == b"a user's video"


def test_an_existing_output_is_replaced_only_with_overwrite(two_camera_scene, tiny_wan_dir, tmp_path):
    out = tmp_path / "render.mp4"
    out.write_bytes(b"an earlier render")
    args = ["--video", two_camera_scene / "videos" / "cam01.mp4", "--model", tiny_wan_dir, "--tracker", "oracle",
            "--trajectory", "arc_left", "--out", out, *TINY]
    assert infer(*args).returncode == 2 and out.read_bytes() == b"an earlier render"
    r = infer(*args, "--overwrite")
    assert r.returncode == 0, r.stderr
    assert read_video(out)[0].shape == (T, H, W, 3)


def test_checkpoint_for_another_base_model_is_refused(two_camera_scene, tiny_wan_dir, tmp_path):
    from track2view.testing.tiny import TINY_TRANSFORMER
    from track2view.model.transformer import Track2ViewTransformer

    other = Track2ViewTransformer.from_config({**TINY_TRANSFORMER, "num_layers": 3},
                                              conditioning_config={"width": 32, "num_heads": 2})
    export = other.save_trained(tmp_path / "export")
    out = tmp_path / "out" / "out.mp4"
    r = infer("--video", two_camera_scene / "videos" / "cam01.mp4", "--model", tiny_wan_dir, "--checkpoint", export,
              "--tracker", "oracle", "--trajectory", "arc_left", "--out", out, *TINY)
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the export was trained for another base model") and "num_layers" in last, r.stderr
    assert not out.parent.exists() or not any(out.parent.iterdir())


# ---- visualizations ---------------------------------------------------------------------------------------
def test_side_by_side_shape_and_halves():
    a = np.full((5, 8, 12, 3), 10, np.uint8)
    b = np.full((6, 16, 24, 3), 200, np.uint8)
    out = side_by_side(a, b, gap=2)
    assert out.shape == (5, 8, 26, 3) and out.dtype == np.uint8
    assert (out[:, :, :12] == 10).all() and (out[:, :, 12:14] == 255).all() and (out[:, :, 14:] == 200).all()


def test_resize_nearest_picks_pixel_centres():
    f = np.arange(16, dtype=np.uint8).reshape(1, 4, 4, 1)
    assert resize_nearest(f, 2, 2)[0, :, :, 0].tolist() == [[5, 7], [13, 15]]


def test_points_land_at_their_pixels():
    frames = np.zeros((2, 10, 20, 3), np.uint8)
    uv = np.array([[[0.525, 0.35]], [[0.025, 0.95]]])  # centres of pixel (row 3, col 10) and (row 9, col 0)
    out = draw_points(frames, uv, np.ones((2, 1), bool), np.array([[255, 0, 0]], np.uint8), radius=0)
    assert out[0, 3, 10].tolist() == [255, 0, 0] and out[0].sum() == 255
    assert out[1, 9, 0].tolist() == [255, 0, 0] and out[1].sum() == 255
    invalid = draw_points(frames, uv, np.zeros((2, 1), bool), np.array([[255, 0, 0]], np.uint8))
    assert invalid.sum() == 0 and frames.sum() == 0  # input untouched


def test_overlay_colours_a_track_the_same_in_both_views():
    t, n = 3, 4
    uv = torch.rand(2, t, n, 2, generator=torch.Generator().manual_seed(0)) * 0.8 + 0.1
    tracks = PairedTracks.from_projections(uv, torch.ones(2, t, n))
    src = np.zeros((t, 16, 16, 3), np.uint8)
    out = track_overlay(src, np.zeros((t, 32, 32, 3), np.uint8), tracks, radius=0, gap=2, outline=False)
    assert out.shape == (t, 16, 34, 3)
    colors = track_colors(uv[0, 0].numpy()).tolist()
    for i in range(n):
        x, y = (uv[0, 0, i].numpy() * 16).astype(int)
        xt, yt = (uv[1, 0, i].numpy() * 16).astype(int)
        assert out[0, y, x].tolist() in colors and out[0, yt, 18 + xt].tolist() in colors
    assert len({tuple(c) for c in track_colors(np.random.default_rng(0).random((50, 2))).tolist()}) > 10
    # at most max_tracks drawn, invalid (padding) tracks never
    many = PairedTracks.from_projections(torch.rand(2, t, 500, 2) * 0.8 + 0.1, torch.ones(2, t, 500)).pad_tracks(600)
    few = track_overlay(src, src, many, radius=0, gap=2, max_tracks=10, outline=False)
    assert 0 < (few[0, :, :16].sum(-1) > 0).sum() <= 10


def test_outline_rings_dots_in_black():
    frames = np.full((1, 9, 9, 3), 255, np.uint8)
    out = draw_points(frames, np.array([[[0.5, 0.5]]]), np.ones((1, 1), bool), np.array([[0, 255, 0]], np.uint8),
                      radius=1, outline=True)
    assert out[0, 4, 4].tolist() == [0, 255, 0] and out[0, 4, 6].tolist() == [0, 0, 0]
    assert out[0, 0, 0].tolist() == [255, 255, 255]


def test_drop_tracks_renders_what_a_silent_conditioner_renders_and_needs_a_tracks_export(two_camera_scene,
                                                                                       tiny_wan_dir, tmp_path):
    """--drop-tracks (every track invalid) = the same model whose conditioner outputs zero; with the tracks the
    trained conditioner changes the video; a camera export refuses the flag."""
    from track2view.inference.rerender import InputError, RerenderRequest, Rerenderer
    from track2view.model.transformer import Track2ViewTransformer

    def export(name, conditioning="tracks", zero=False):
        config = {"width": 32, "num_heads": 2} if conditioning == "tracks" else None
        model = Track2ViewTransformer.from_pretrained(tiny_wan_dir, conditioning=conditioning, conditioning_config=config)
        if conditioning == "tracks":
            torch.manual_seed(0)
            torch.nn.init.normal_(model.conditioning.out_proj.weight, std=0 if zero else 0.5)
        return model.save_trained(tmp_path / name)

    def render(checkpoint, name, **options):
        request = RerenderRequest(video=str(two_camera_scene / "videos" / "cam01.mp4"), out=str(tmp_path / name),
                                  trajectories=["arc_left"], tracker="oracle", num_queries=64, steps=2, height=H,
                                  width=W, num_frames=T, **options)
        Rerenderer(str(tiny_wan_dir), str(checkpoint), device="cpu").render(request)
        return read_video(tmp_path / name)[0].astype(int)

    trained, silent = export("trained"), export("silent", zero=True)
    with_tracks, dropped = render(trained, "a.mp4"), render(trained, "b.mp4", drop_tracks=True)
    np.testing.assert_array_equal(dropped, render(silent, "c.mp4"))
    assert np.abs(with_tracks - dropped).mean() > 1.0
    with pytest.raises(InputError, match="--drop-tracks marks the tracks of a 'tracks' export invalid"):
        render(export("camera", conditioning="camera"), "d.mp4", drop_tracks=True)
    assert not (tmp_path / "d.mp4").exists()


def test_shift_target_tracks_moves_only_the_target_view_and_needs_a_tracks_export(two_camera_scene, tiny_wan_dir,
                                                                                   tmp_path):
    """--shift-target-tracks DX (evaluate.py's track-following probe): the target view's uv move by DX along x, the
    source view's stay, points pushed out of the frame become invalid; a camera export refuses it."""
    from track2view.inference.rerender import InputError, RerenderRequest, Rerenderer
    from track2view.model.transformer import Track2ViewTransformer
    from track2view.tracks import TARGET, PairedTracks

    uv = torch.tensor([[0.1, 0.5], [0.9, 0.5]]).expand(2, 3, 2, 2).clone()  # [2 views, 3 frames, 2 points, 2]
    tracks = PairedTracks(uv, torch.ones(2, 3, 2), torch.ones(2, 3, 2, dtype=torch.bool))
    moved = tracks.shifted(TARGET, 0.25)
    torch.testing.assert_close(moved.uv[0], uv[0])
    torch.testing.assert_close(moved.uv[1, :, 0], torch.tensor([0.35, 0.5]).expand(3, 2))
    assert moved.valid[0].all() and moved.valid[1, :, 0].all() and not moved.valid[1, :, 1].any()
    assert tracks.uv[1, 0, 0, 0] == pytest.approx(0.1)  # the input is not changed in place

    camera = Track2ViewTransformer.from_pretrained(tiny_wan_dir, conditioning="camera").save_trained(tmp_path / "cam")
    request = RerenderRequest(video=str(two_camera_scene / "videos" / "cam01.mp4"), out=str(tmp_path / "a.mp4"),
                              trajectories=["arc_left"], tracker="oracle", num_queries=64, steps=2, height=H, width=W,
                              num_frames=T, shift_target_tracks=0.25)
    with pytest.raises(InputError, match="--shift-target-tracks moves the target tracks of a 'tracks' export"):
        Rerenderer(str(tiny_wan_dir), str(camera), device="cpu").render(request)
    assert not (tmp_path / "a.mp4").exists()

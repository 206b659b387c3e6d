"""Camera conventions: Unreal JSON parsing, Unreal -> OpenCV, lens intrinsics, projection (hand-computed cases)."""

import json

import numpy as np
import pytest
import torch

from track2view import cameras as C

# Unreal rows: forward, right, up, location (cm). Camera A looks along world +x; camera B is yawed +90 deg
# (looks along world +y, which is Unreal's "right"), 2 m further along y.
UNREAL_A = "[1 0 0 0] [-0 1 0 0] [0 -0 1 0] [3390 1380 240 1] "
UNREAL_B = "[0 1 0 0] [-1 0 0 0] [0 0 1 0] [3390 1580 240 1] "


def test_parse_four_and_three_value_rows():
    four = C.parse_unreal_matrix(UNREAL_A)
    three = C.parse_unreal_matrix("[1 0 0] [-0 1 0] [0 -0 1] [3390 1380 240] ")
    expected = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [3390, 1380, 240, 1]], dtype=float)
    np.testing.assert_array_equal(four, expected)
    np.testing.assert_array_equal(three, expected)
    with pytest.raises(ValueError, match="4 bracketed rows"):
        C.parse_unreal_matrix("[1 0 0 0] [0 1 0 0]")
    with pytest.raises(ValueError, match="expected 3 or 4"):
        C.parse_unreal_matrix("[1 0] [0 1 0 0] [0 0 1 0] [0 0 0 1]")
    with pytest.raises(ValueError, match="not numeric"):
        C.parse_unreal_matrix("[a 0 0 0] [0 1 0 0] [0 0 1 0] [0 0 0 1]")


def test_unreal_to_opencv_hand_made():
    a = C.unreal_to_opencv(C.parse_unreal_matrix(UNREAL_A))
    # OpenCV columns: x = Unreal right (+y world), y = -Unreal up (-z world), z = Unreal forward (+x world)
    expected = np.array([[0, 0, 1, 33.9], [1, 0, 0, 13.8], [0, -1, 0, 2.4], [0, 0, 0, 1]])
    np.testing.assert_allclose(a, expected, atol=1e-12)
    assert np.linalg.det(a[:3, :3]) == pytest.approx(-1.0)  # the world stays left-handed
    b = C.unreal_to_opencv(C.parse_unreal_matrix(UNREAL_B))
    np.testing.assert_allclose(b[:3, :3], [[-1, 0, 0], [0, 0, 1], [0, -1, 0]], atol=1e-12)
    # relative pose of B in A's camera frame: a proper rotation, +90 deg about the camera's y (down) axis:
    # B looks along A's x (right) and sits 2 m to A's right.
    rel = C.relative_to(b, a)
    assert np.linalg.det(rel[:3, :3]) == pytest.approx(1.0)
    np.testing.assert_allclose(rel[:3, :3], [[0, 0, 1], [0, 1, 0], [-1, 0, 0]], atol=1e-12)
    np.testing.assert_allclose(rel[:3, 3], [2.0, 0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(C.relative_to(a, a), np.eye(4), atol=1e-12)
    # inverse conversion restores the file's matrix
    np.testing.assert_allclose(C.opencv_to_unreal(b), C.parse_unreal_matrix(UNREAL_B), atol=1e-12)


def test_random_relative_rotations_are_proper(tmp_path):
    rng = np.random.default_rng(0)
    cams = {}
    for name in ("cam01", "cam02"):
        rows = []
        for _ in range(3):
            q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
            q *= np.sign(np.linalg.det(q))  # Unreal's rows are a rotation of the left-handed world: det +1
            u = np.eye(4)
            u[:3, :3], u[3, :3] = q, rng.uniform(-500, 500, 3)
            rows.append(C.format_unreal_matrix(u))
        cams[name] = rows
    path = tmp_path / "camera_extrinsics.json"
    path.write_text(json.dumps({f"frame{t}": {c: cams[c][t] for c in cams} for t in range(3)}))
    c2w = C.read_multicam_cameras(path)
    assert sorted(c2w) == ["cam01", "cam02"] and c2w["cam01"].shape == (3, 4, 4)
    rel = C.relative_to(np.stack([c2w["cam01"], c2w["cam02"]]), c2w["cam01"][0])
    np.testing.assert_allclose(np.linalg.det(rel[..., :3, :3]), 1.0, atol=1e-9)
    np.testing.assert_allclose(np.linalg.det(c2w["cam02"][..., :3, :3]), -1.0, atol=1e-9)


def test_json_round_trip_and_errors(tmp_path):
    rng = np.random.default_rng(1)
    c2w = {c: np.stack([C.unreal_to_opencv(np.vstack([np.eye(4)[:3], [*rng.uniform(-9e3, 9e3, 3), 1]]))
                        for _ in range(4)]) for c in ("cam01", "cam02")}
    path = C.write_multicam_cameras(tmp_path / "cameras" / "camera_extrinsics.json", c2w)
    back = C.read_multicam_cameras(path)
    for c in c2w:
        np.testing.assert_allclose(back[c], c2w[c], atol=1e-7)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"frame0": {"cam01": UNREAL_A}, "frame2": {"cam01": UNREAL_A}}))
    with pytest.raises(ValueError, match="without gaps"):
        C.read_multicam_cameras(bad)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        C.read_multicam_cameras(bad)


def test_intrinsics_from_lens():
    assert C.focal_from_lens("f35_aperture2.4") == 35.0
    assert C.focal_from_lens("/data/train/f18_aperture10") == 18.0
    with pytest.raises(ValueError, match="f24_aperture5"):
        C.focal_from_lens("scene1")
    K = C.intrinsics_from_lens("f24_aperture5", height=48, width=64)
    fx_px = 24 / 23.76 * 64
    np.testing.assert_allclose(K, [[fx_px / 64, 0, 0.5], [0, fx_px / 48, 0.5], [0, 0, 1]])
    np.testing.assert_allclose(C.denormalize_intrinsics(K, 48, 64), [[fx_px, 0, 32], [0, fx_px, 24], [0, 0, 1]])
    np.testing.assert_allclose(C.normalize_intrinsics(C.denormalize_intrinsics(K, 48, 64), 48, 64), K)
    assert C.lens_name(35, 2.4) == "f35_aperture2.4"


def test_project_hand_computed_and_pixel_centres():
    H, W = 48, 64
    K = C.intrinsics_from_lens("f24_aperture5", H, W)
    fx_px = 24 / 23.76 * W
    a = C.unreal_to_opencv(C.parse_unreal_matrix(UNREAL_A))
    # 5 m straight ahead of A (world +x) -> image centre; a point on the ray through the centre of pixel
    # (row 3, column 10) -> uv = (10.5 / W, 3.5 / H)
    ahead = a[:3, 3] + [5.0, 0, 0]
    x_cam, y_cam = (10.5 - W / 2) / fx_px * 5, (3.5 - H / 2) / fx_px * 5
    pixel = a[:3, 3] + 5.0 * a[:3, 2] + x_cam * a[:3, 0] + y_cam * a[:3, 1]
    behind = a[:3, 3] - [2.0, 0, 0]
    uv, depth = C.project(np.stack([ahead, pixel, behind]), a, K)
    np.testing.assert_allclose(uv[0], [0.5, 0.5], atol=1e-12)
    np.testing.assert_allclose(uv[1], [10.5 / W, 3.5 / H], atol=1e-12)
    np.testing.assert_allclose(depth, [5.0, 5.0, -2.0], atol=1e-12)
    # a point to A's right (world +y) lands right of centre, one above (world +z) above centre
    uv, _ = C.project(np.stack([ahead + [0, 1, 0], ahead + [0, 0, 1]]), a, K)
    assert uv[0, 0] > 0.5 and uv[1, 1] < 0.5


def test_project_unproject_round_trip_numpy_and_torch():
    rng = np.random.default_rng(2)
    T, N = 3, 7
    c2w = np.stack([C.unreal_to_opencv(C.parse_unreal_matrix(s)) for s in (UNREAL_A, UNREAL_B, UNREAL_A)])
    K = np.broadcast_to(C.intrinsics_from_lens("f50_aperture2.4", 32, 48), (T, 3, 3))
    uv = rng.uniform(0, 1, (T, N, 2))
    depth = rng.uniform(0.5, 20, (T, N))
    pts = C.unproject(uv, depth, c2w, K)
    uv2, depth2 = C.project(pts, c2w, K)
    np.testing.assert_allclose(uv2, uv, atol=1e-9)
    np.testing.assert_allclose(depth2, depth, atol=1e-9)
    uv_t, depth_t = C.project(torch.tensor(pts), torch.tensor(c2w), torch.tensor(np.array(K)))
    assert isinstance(uv_t, torch.Tensor)
    np.testing.assert_allclose(uv_t.numpy(), uv, atol=1e-9)
    pts_t = C.unproject(torch.tensor(uv), torch.tensor(depth), torch.tensor(c2w), torch.tensor(np.array(K)))
    np.testing.assert_allclose(pts_t.numpy(), pts, atol=1e-9)

"""Keypoint matchers for Mat.Pix.: OpenCV SIFT (no weights) and kornia's DISK + LightGlue (local weights).

A matcher maps two frames uint8 [H, W, 3] to matched pixel coordinates (pts_a [M, 2], pts_b [M, 2]);
`magsac_inliers` then keeps the matches consistent with one fundamental matrix, as GIM's evaluation does
(`cv2.findFundamentalMat(USAC_MAGSAC, 1.0 px, 0.999999, 10000 iterations)`).
"""

from __future__ import annotations

import numpy as np
import torch

from track2view.eval.errors import EvalInputError
from track2view.eval.networks.device import resolve_device
from track2view.eval.networks.weights import load_into, load_state_dict

MIN_MATCHES = 8  # a fundamental matrix needs 8 correspondences
MAX_KEYPOINTS = 2048  # GIM-LightGlue's keypoint budget


def magsac_inliers(pts_a: np.ndarray, pts_b: np.ndarray) -> int:
    """Number of matches that agree with one fundamental matrix (OpenCV's MAGSAC++)."""
    import cv2

    if len(pts_a) < MIN_MATCHES:
        return 0
    try:
        _, mask = cv2.findFundamentalMat(np.float64(pts_a), np.float64(pts_b), cv2.USAC_MAGSAC, 1.0, 0.999999, 10000)
    except cv2.error:  # a degenerate configuration (e.g. all matches on a line): no fundamental matrix
        return 0
    return 0 if mask is None else int(mask.sum())


class SIFTMatcher:
    """OpenCV SIFT on grey frames, brute-force L2 nearest neighbours, Lowe's ratio test (0.8)."""

    name = "sift+ratio0.8+magsac"

    def __init__(self, ratio: float = 0.8):
        import cv2

        self.ratio, self.sift, self.matcher = ratio, cv2.SIFT_create(), cv2.BFMatcher(cv2.NORM_L2)

    def _features(self, frame: np.ndarray):
        import cv2

        return self.sift.detectAndCompute(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), None)

    def __call__(self, frame_a: np.ndarray, frame_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        (kp_a, desc_a), (kp_b, desc_b) = self._features(frame_a), self._features(frame_b)
        if desc_a is None or desc_b is None or len(kp_a) < 2 or len(kp_b) < 2:
            return np.zeros((0, 2)), np.zeros((0, 2))
        pairs = [p for p in self.matcher.knnMatch(desc_a, desc_b, k=2) if len(p) == 2]
        good = [m for m, n in pairs if m.distance < self.ratio * n.distance]
        return (np.array([kp_a[m.queryIdx].pt for m in good]).reshape(-1, 2),
                np.array([kp_b[m.trainIdx].pt for m in good]).reshape(-1, 2))


def _lightglue_state(state: dict, n_layers: int) -> dict:
    """The upstream LightGlue file names its layers self_attn.<i> / cross_attn.<i>; kornia nests them."""
    for i in range(n_layers):
        for part in ("self_attn", "cross_attn"):
            state = {k.replace(f"{part}.{i}.", f"transformers.{i}.{part}."): v for k, v in state.items()}
    return state


class LightGlueMatcher:
    """kornia's DISK keypoints (2048 per frame) + LightGlue (filter threshold 0.1), weights from local files:
    --disk (DISK's checkpoint, its 'extractor' state) and --lightglue (`disk_lightglue.pth`)."""

    name = "disk+lightglue+magsac"

    def __init__(self, disk_path, lightglue_path, device: str | None = None):
        import kornia.feature as KF

        self.device = resolve_device(device)
        disk_state = load_state_dict(disk_path, "DISK", "--disk")
        disk_state = disk_state.get("extractor", disk_state)
        self.disk = load_into(KF.DISK(), disk_state, "DISK", disk_path, "--disk").to(self.device).eval()
        lightglue = KF.LightGlue(features=None, input_dim=128)
        state = _lightglue_state(load_state_dict(lightglue_path, "LightGlue (DISK)", "--lightglue"),
                                 lightglue.conf.n_layers)
        self.lightglue = load_into(lightglue, state, "LightGlue (DISK)", lightglue_path, "--lightglue")
        self.lightglue.to(self.device).eval()

    def _features(self, frame: np.ndarray):
        image = torch.as_tensor(frame).permute(2, 0, 1)[None].float().to(self.device) / 255.0
        f = self.disk(image, n=MAX_KEYPOINTS, pad_if_not_divisible=True)[0]
        size = torch.tensor([[frame.shape[1], frame.shape[0]]], device=self.device)  # (W, H), as LightGlue takes
        return {"keypoints": f.keypoints[None], "descriptors": f.descriptors[None], "image_size": size}

    @torch.no_grad()
    def __call__(self, frame_a: np.ndarray, frame_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a, b = self._features(frame_a), self._features(frame_b)
        if a["keypoints"].shape[1] < 2 or b["keypoints"].shape[1] < 2:
            return np.zeros((0, 2)), np.zeros((0, 2))
        matches = self.lightglue({"image0": a, "image1": b})["matches"][0]
        return (a["keypoints"][0, matches[:, 0]].cpu().numpy(), b["keypoints"][0, matches[:, 1]].cpu().numpy())


def build_matcher(name: str, disk=None, lightglue=None, device=None):
    if name == "sift":
        return SIFTMatcher()
    if name == "lightglue":
        return LightGlueMatcher(disk, lightglue, device)
    raise EvalInputError(f"unknown matcher {name!r}; choose sift (no weights) or lightglue (--disk, --lightglue)")

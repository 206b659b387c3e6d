"""A stand-in SpaTrackerV2 clone for CPU tests: our own small code with the upstream interface the adapter uses.

    with fake_clone(tmp_path, behaviour="faithful") as paths:   # paths: repo_dir, front_weights, tracker_weights
        get_tracker("spatialtracker_v2", device="cpu", **paths).track(video, queries)

It mimics what track2view/trackers/stv2_upstream.py lists: the three modules under a top-level package
`models`, `from_pretrained(dir)` reading `config.json`, constructors for random weights, `Predictor.to()`
returning None, `S_wind` / `overlap` / `spatrack.max_len` / `spatrack.track_num`, the 9 outputs of
`Predictor.forward` in upstream's frames (processed pixels with centres at integers, camera-to-world poses,
camera-frame 3D tracks, vis = sigmoid + 0.2, conf a sigmoid), and the query handling of `full_point=False`
(queries on low-confidence depth dropped, random duplicates appended). The scene is static and exact: every
query is unprojected with the front end's depth and intrinsics at its frame and reprojected into every frame.

`behaviour` (the tracker weights' config.json) makes it misbehave: "reorder" reverses the tracks, "duplicate"
copies track 0 over track 1, "drop" returns one track fewer. `cuda=True` writes a SpaTrack.py that hard-codes
`.cuda()`, as upstream's does.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

BEHAVIOURS = ("faithful", "reorder", "duplicate", "drop")

_FRONT = '''
import json
from pathlib import Path

import torch


class VGGT4Track(torch.nn.Module):
    """Cameras sliding along x, constant depth 2, a low-confidence strip at the left edge."""

    def __init__(self, img_size=518, patch_size=14, embed_dim=8):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    @classmethod
    def from_pretrained(cls, path):
        return cls(**json.loads((Path(path) / "config.json").read_text()))

    def forward(self, images):
        B, T, _, h, w = images.shape
        c2w = torch.eye(4)[None].repeat(T, 1, 1)
        c2w[:, 0, 3] = 0.02 * torch.arange(T)
        K = torch.tensor([[0.8 * w, 0, (w - 1) / 2], [0, 0.8 * w, (h - 1) / 2], [0, 0, 1.0]])
        points = torch.zeros(B * T, h, w, 3, device=images.device)
        points[..., 2] = 2.0 * self.scale
        unc = torch.full((B * T, h, w), 0.9, device=images.device)
        unc[..., : w // 10] = 0.1
        return {"poses_pred": c2w[None], "intrs": K.repeat(B, T, 1, 1).to(images.device), "points_map": points,
                "unc_metric": unc}
'''

_PREPROCESS = '''
import torch


def preprocess_image(img_tensor, mode="crop", target_size=518):
    T, C, H, W = img_tensor.shape
    new_h = round(H * (target_size / W) / 14) * 14
    out = torch.nn.functional.interpolate(img_tensor, size=(new_h, target_size), mode="bilinear", align_corners=False)
    if new_h > target_size:
        top = (new_h - target_size) // 2
        out = out[:, :, top: top + target_size]
    return out
'''

_PREDICTOR = '''
import json
import types
from pathlib import Path

import numpy as np
import torch


class Predictor(torch.nn.Module):
    def __init__(self, args=None):
        super().__init__()
        args = dict(args or {})
        self.behaviour = args.get("behaviour", "faithful")
        self.spatrack = types.SimpleNamespace(track_num=args.get("track_num", 756), max_len=args.get("max_len", 512))
        self.S_wind, self.overlap = args.get("s_wind", 500), 4
        self.weight = torch.nn.Parameter(torch.zeros(()))

    @classmethod
    def from_pretrained(cls, path):
        return cls(**json.loads((Path(path) / "config.json").read_text()))

    def to(self, device):  # as upstream: overridden, returns None
        super().to(device)

    def forward(self, video, depth=None, unc_metric=None, intrs=None, extrs=None, queries=None, full_point=False,
                **kwargs):
        T, _, h, w = video.shape
        q = np.asarray(queries, dtype=np.float64)
        if not full_point:  # upstream: drop queries on unreliable depth, append random duplicates
            t, x, y = q[:, 0].astype(int), np.clip(np.round(q[:, 1]), 0, w - 1), np.clip(np.round(q[:, 2]), 0, h - 1)
            keep = np.asarray(unc_metric)[t, y.astype(int), x.astype(int)] > 0.5
            extra = np.random.default_rng(0).integers(0, keep.sum(), len(q) - keep.sum())
            q = np.concatenate([q[keep], q[keep][extra]])
        track2d, cam = self._reproject(q, np.asarray(depth), np.asarray(intrs), np.asarray(extrs))
        if self.behaviour == "reorder":
            track2d, cam = track2d[:, ::-1], cam[:, ::-1]
        elif self.behaviour == "duplicate":
            track2d[:, 1], cam[:, 1] = track2d[:, 0], cam[:, 0]
        elif self.behaviour == "drop":
            track2d, cam = track2d[:, 1:], cam[:, 1:]
        inside = (track2d[..., 0] > -0.5) & (track2d[..., 0] < w - 0.5) & (track2d[..., 1] > -0.5) & \\
            (track2d[..., 1] < h - 0.5) & (cam[..., 2] > 0)
        vis = torch.sigmoid(torch.from_numpy(np.where(inside, 3.0, -3.0)))[..., None] + 0.2
        N = track2d.shape[1]
        as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).float()
        return (as_t(extrs), as_t(intrs), torch.zeros(T, 3, h, w), torch.ones(T, h, w),
                torch.cat([as_t(cam), torch.zeros(T, N, 3)], -1), as_t(track2d), vis.float(),
                torch.full((T, N, 1), 0.8), video)

    @staticmethod
    def _reproject(q, depth, K, c2w):
        """Static points: query (t, x, y) unprojected at frame t, projected into every frame (centres at integers)."""
        t = q[:, 0].astype(int)
        z = depth[t, np.clip(np.round(q[:, 2]), 0, depth.shape[1] - 1).astype(int),
                  np.clip(np.round(q[:, 1]), 0, depth.shape[2] - 1).astype(int)]
        rays = np.einsum("nij,nj->ni", np.linalg.inv(K[t]), np.stack([q[:, 1], q[:, 2], np.ones(len(q))], -1))
        cam_q = rays * z[:, None]
        world = np.einsum("nij,nj->ni", c2w[t, :3, :3], cam_q) + c2w[t, :3, 3]
        w2c = np.linalg.inv(c2w)
        cam = np.einsum("tij,nj->tni", w2c[:, :3, :3], world) + w2c[:, None, :3, 3]
        pix = np.einsum("tij,tnj->tni", K, cam / cam[..., 2:3])
        return np.concatenate([pix[..., :2], cam[..., 2:3]], -1), cam
'''


def write_fake_clone(root: str | Path, cuda: bool = False) -> Path:
    """Write the stand-in clone under `root` (models/SpaTrackV2/...); returns its root."""
    root = Path(root)
    base = root / "models" / "SpaTrackV2" / "models"
    files = {base / "vggt4track" / "models" / "vggt_moe.py": _FRONT,
             base / "vggt4track" / "utils" / "load_fn.py": _PREPROCESS,
             base / "predictor.py": _PREDICTOR,
             base / "SpaTrack.py": "# stand-in; upstream's forward_stream moves tensors to CUDA\n"
                                   + ("x = None.cuda()\n" if cuda else "")}
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text.lstrip())
    for folder in {p.parent for p in files}:
        for d in [folder, *folder.parents]:
            if d == root:
                break
            (d / "__init__.py").touch()
    return root


def write_fake_weights(folder: str | Path, config: dict) -> Path:
    """A model directory as `from_pretrained` reads it: config.json and a (tiny) model.safetensors."""
    import numpy as np
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    save_file({"unused": np.zeros(1, np.float32)}, str(folder / "model.safetensors"))
    return folder


def forget_upstream(repo: str | Path | None = None) -> None:
    """Remove an imported clone (the top-level package `models`) from sys.modules, and `repo` from sys.path."""
    for name in [m for m in sys.modules if m == "models" or m.startswith("models.")]:
        del sys.modules[name]
    if repo is not None and str(Path(repo).resolve()) in sys.path:
        sys.path.remove(str(Path(repo).resolve()))


@contextlib.contextmanager
def fake_clone(root: str | Path, behaviour: str = "faithful", cuda: bool = False, **predictor_args):
    """Write a stand-in clone and weights under `root`; yield the adapter options {repo_dir, front_weights,
    tracker_weights}; forget the clone's modules afterwards. `predictor_args` (s_wind, max_len) go to the
    tracker weights' config."""
    if behaviour not in BEHAVIOURS:
        raise ValueError(f"unknown fake behaviour {behaviour!r}; one of {BEHAVIOURS}")
    root = Path(root)
    repo = write_fake_clone(root / "SpaTrackerV2", cuda=cuda)
    options = {"repo_dir": str(repo), "front_weights": str(write_fake_weights(root / "front", {"embed_dim": 8})),
               "tracker_weights": str(write_fake_weights(root / "offline",
                                                          {"args": {"behaviour": behaviour, **predictor_args}}))}
    forget_upstream(repo)
    try:
        yield options
    finally:
        forget_upstream(repo)

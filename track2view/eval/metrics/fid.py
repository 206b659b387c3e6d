"""FID: Frechet distance between Inception-v3 pool features of generated frames and a real-frame reference.

Convention: every generated frame of a group (split x frame count) is one sample; the reference statistics
(mean, covariance of 2048-d pool features) are computed once from real frames by `evaluate.py reference` and
saved, through the same `FIDInceptionV3` (same resize) as the generated frames. The distance is computed
exactly as torchmetrics' `FrechetInceptionDistance` defines it (`frechet` says why it is computed here).

Reference file (npz, no pickle): mu [2048] float64, sigma [2048, 2048] float64, num_frames int, network str.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from track2view.eval.errors import EvalInputError
from track2view.eval.metric import Clip, SetMetric
from track2view.eval.networks.device import resolve_device
from track2view.io import atomic_path

FRAME_BATCH = 16
NETWORK = "inception-v3-2015-12-05 pool3, bilinear 299 (pytorch-fid resize)"


class InceptionFeatures:
    """frames [T, H, W, 3] uint8 -> pool features [T, 2048] float32 with `FIDInceptionV3`."""

    def __init__(self, inception_path, device: str | None = None):
        from track2view.eval.networks.inception import load_fid_inception

        self.device = resolve_device(device)
        self.network = load_fid_inception(inception_path).to(self.device)

    @torch.no_grad()
    def __call__(self, frames: np.ndarray) -> np.ndarray:
        out = []
        for start in range(0, len(frames), FRAME_BATCH):
            batch = torch.from_numpy(np.ascontiguousarray(frames[start:start + FRAME_BATCH])).permute(0, 3, 1, 2)
            out.append(self.network(batch.to(self.device)).cpu().numpy())
        return np.concatenate(out).astype(np.float32)


def frechet(reference: dict, features: np.ndarray) -> float:
    """FID of generated features [N, D] against reference statistics {mu, sigma, num_frames}.

    ||mu_r - mu_g||^2 + tr(S_r) + tr(S_g) - 2 tr((S_r S_g)^(1/2)), the trace of the square root from symmetric
    eigenvalues: with A = (F - mu_g)^T / sqrt(N - 1) (so S_g = A A^T), S_r S_g has the eigenvalues of the N x N
    matrix A^T S_r A (plus zeros), and for N > D those of S_r^(1/2) S_g S_r^(1/2). Written here because
    torchmetrics' FrechetInceptionDistance takes the general eigenvalues of the 2048 x 2048 product, 16 s per
    FID on one core (a table has nine); the tests check both agree.
    """
    g = np.asarray(features, np.float64)
    if len(g) < 2:
        return float("nan")
    mu_r, sigma_r = np.asarray(reference["mu"], np.float64), np.asarray(reference["sigma"], np.float64)
    mu_g = g.mean(0)
    a = (g - mu_g).T / np.sqrt(len(g) - 1)  # [D, N]
    if len(g) <= len(mu_r):
        product = a.T @ sigma_r @ a
    else:
        w, v = np.linalg.eigh(sigma_r)
        root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
        product = root @ (a @ a.T) @ root
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((product + product.T) / 2), 0, None)).sum()
    return float(((mu_r - mu_g) ** 2).sum() + np.trace(sigma_r) + (a * a).sum() - 2 * trace_sqrt)


class ReferenceStatistics:
    """Streams real-frame features [N, D] into sums; `result()` -> {mu, sigma (sample covariance), num_frames}."""

    def __init__(self, dim: int):
        self.count, self.sum, self.outer = 0, np.zeros(dim), np.zeros((dim, dim))

    def add(self, features: np.ndarray) -> None:
        f = np.asarray(features, np.float64)
        self.count, self.sum, self.outer = self.count + len(f), self.sum + f.sum(0), self.outer + f.T @ f

    def result(self) -> dict:
        n = self.count
        if n < 2:
            raise EvalInputError(f"FID reference statistics need at least 2 frames, got {n}")
        mu = self.sum / n
        return {"mu": mu, "sigma": (self.outer - n * np.outer(mu, mu)) / (n - 1), "num_frames": np.int64(n)}


def save_reference(path: str | Path, stats: dict) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, mu=stats["mu"], sigma=stats["sigma"], num_frames=stats["num_frames"], network=NETWORK)
    return Path(path)


def load_reference(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise EvalInputError(f"--fid-reference {path} not found; compute it once with `evaluate.py reference`")
    try:
        with np.load(path, allow_pickle=False) as f:
            stats = {k: f[k] for k in ("mu", "sigma", "num_frames")}
    except (ValueError, KeyError, OSError) as e:
        raise EvalInputError(f"--fid-reference {path} is not FID reference statistics (mu, sigma, num_frames): "
                             f"{e}") from None
    d = stats["mu"].shape[0] if stats["mu"].ndim == 1 else -1
    if d < 1 or stats["sigma"].shape != (d, d):
        raise EvalInputError(f"--fid-reference {path}: mu must be [D] and sigma [D, D], got "
                             f"{list(stats['mu'].shape)} and {list(stats['sigma'].shape)}")
    return stats


class FID(SetMetric):
    """Set-level FID of the generated frames (see the module docstring). Per clip: features [T, 2048]."""

    name, names = "fid", ("fid",)

    def __init__(self, inception_path, reference_path, device: str | None = None):
        self.reference = load_reference(reference_path)
        self.extract = InceptionFeatures(inception_path, device)
        if len(self.reference["mu"]) != self.extract.network.num_features:
            raise EvalInputError(f"--fid-reference {reference_path} has {len(self.reference['mu'])}-d features, "
                                 f"the Inception pool has {self.extract.network.num_features}")

    def features(self, clip: Clip) -> np.ndarray:
        return self.extract(clip.generated)

    def compute(self, features: list[np.ndarray]) -> dict[str, float]:
        return {"fid": frechet(self.reference, np.concatenate(features))}

    def info(self) -> dict:
        return {**super().info(), "network": NETWORK, "reference_frames": int(self.reference["num_frames"])}

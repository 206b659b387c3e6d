"""RotErr, TransErr, CamMC between true and estimated camera trajectories, in two conventions.

Both take c2w [T, 4, 4] and first make each trajectory relative to its own frame 0 (inv(c2w_0) @ c2w_t). Written
here because no library implements these benchmark conventions (they are a few lines of arithmetic).

Paper (Track2View / CameraCtrl protocol, means over frames):
    rot_err_deg   mean_t geodesic angle between R_true,t and R_est,t, degrees
    trans_err     mean_t ||t_true,t - s t_est,t||, with s aligning the scale on the first two frames:
                  s = ||t_true,1|| / ||t_est,1|| (frame 1's distance from frame 0)
    cam_mc        mean_t Frobenius norm of [R|t]_true,t - [R|s t]_est,t
CamI2V (its public code, sums over frames):
    rot_err_sum   sum_t geodesic angle, radians
    trans_err_sum sum_t ||t_true,t / m_true - t_est,t / m_est||, m = max_t ||t_t|| + 1e-9 (per trajectory)
    cam_mc_sum    sum_t Frobenius norm of [R|t/m]_true,t - [R|t/m]_est,t
A degenerate paper scale (the estimate does not move between frames 0 and 1) gives NaN translation errors.
"""

from __future__ import annotations

import numpy as np

PAPER = ("rot_err_deg", "trans_err", "cam_mc")
CAMI2V = ("rot_err_sum", "trans_err_sum", "cam_mc_sum")
NAMES = PAPER + CAMI2V
EPS = 1e-9


def relative_to_first(c2w: np.ndarray) -> np.ndarray:
    c2w = np.asarray(c2w, dtype=np.float64)
    return np.linalg.inv(c2w[0]) @ c2w


def geodesic(r_true: np.ndarray, r_est: np.ndarray) -> np.ndarray:
    """Angles [T] in radians between rotations [T, 3, 3]."""
    trace = np.einsum("tij,tij->t", r_true, r_est)  # tr(R_true^T R_est)
    return np.arccos(np.clip((trace - 1.0) / 2.0, -1.0, 1.0))


def _rt(c2w: np.ndarray, translation: np.ndarray) -> np.ndarray:
    return np.concatenate([c2w[:, :3, :3], translation[:, :, None]], axis=2)


def paper_errors(true_c2w: np.ndarray, est_c2w: np.ndarray) -> dict[str, float]:
    true, est = relative_to_first(true_c2w), relative_to_first(est_c2w)
    angles = geodesic(true[:, :3, :3], est[:, :3, :3])
    out = {"rot_err_deg": float(np.degrees(angles).mean()), "trans_err": float("nan"), "cam_mc": float("nan")}
    t_true, t_est = true[:, :3, 3], est[:, :3, 3]
    step = np.linalg.norm(t_est[1]) if len(t_est) > 1 else 0.0
    if step > EPS:
        scaled = t_est * (np.linalg.norm(t_true[1]) / step)
        out["trans_err"] = float(np.linalg.norm(t_true - scaled, axis=1).mean())
        out["cam_mc"] = float(np.linalg.norm(_rt(true, t_true) - _rt(est, scaled), axis=(1, 2)).mean())
    return out


def cami2v_errors(true_c2w: np.ndarray, est_c2w: np.ndarray) -> dict[str, float]:
    true, est = relative_to_first(true_c2w), relative_to_first(est_c2w)
    t_true, t_est = true[:, :3, 3], est[:, :3, 3]
    t_true = t_true / (np.linalg.norm(t_true, axis=1).max() + EPS)
    t_est = t_est / (np.linalg.norm(t_est, axis=1).max() + EPS)
    return {"rot_err_sum": float(geodesic(true[:, :3, :3], est[:, :3, :3]).sum()),
            "trans_err_sum": float(np.linalg.norm(t_true - t_est, axis=1).sum()),
            "cam_mc_sum": float(np.linalg.norm(_rt(true, t_true) - _rt(est, t_est), axis=(1, 2)).sum())}


def pose_errors(true_c2w: np.ndarray, est_c2w: np.ndarray) -> dict[str, float]:
    """Every score of NAMES for one pair of trajectories [T, 4, 4]."""
    return {**paper_errors(true_c2w, est_c2w), **cami2v_errors(true_c2w, est_c2w)}

"""Camera accuracy: poses estimated on the generated video (pose_estimation.py, GLOMAP) against the target
trajectory the clip was generated for, in both conventions of pose_errors.py.

Each frame count is reconstructed on its own (the first n frames, as the paper truncates the video). A failed
reconstruction gives NaN errors and `pose_failed` = 1, which the table counts.
"""

from __future__ import annotations

from track2view.eval.metric import Clip, Metric, failed
from track2view.eval.metrics.pose_errors import NAMES, pose_errors
from track2view.eval.metrics.pose_estimation import PoseFailure, estimate_poses


class CameraAccuracy(Metric):
    name, names = "camera_accuracy", NAMES + ("pose_failed",)
    requires = ("target_c2w", "intrinsics")

    def __init__(self, num_threads: int = -1):
        self.num_threads = num_threads

    def __call__(self, clip: Clip) -> dict[str, float]:
        try:
            estimated = estimate_poses(clip.generated, clip.intrinsics, self.num_threads)
        except PoseFailure as e:
            clip.meta.setdefault("pose_failures", []).append(f"{clip.num_frames} frames: {e}")
            return failed(NAMES, "pose_failed")
        return {**pose_errors(clip.target_c2w, estimated), "pose_failed": 0.0}

    def info(self) -> dict:
        return {**super().info(), "estimator": "pycolmap global_mapping (GLOMAP), SIFT, sequential "
                "matching, PINHOLE at the known intrinsics, fixed", "conventions": {
                    "paper": "rot_err_deg (mean degrees), trans_err / cam_mc (scale aligned on frames 0-1, mean)",
                    "cami2v": "rot_err_sum (summed radians), trans_err_sum / cam_mc_sum (max-distance "
                              "normalized, summed)"}}

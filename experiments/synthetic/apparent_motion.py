r"""How much, and which way, a row's re-renders move: what lies under RotErr / TransErr.

    python experiments/synthetic/apparent_motion.py --out-dir RUN --rows "target_copy tracks source_copy" [--poses]

Per row, over the clips of RUN/eval/generated/<row>: the apparent motion, the summed mean optical-flow magnitude
between consecutive frames (OpenCV's Farneback, pixels at the videos' size), and its direction, the cosine between
the row's flow field and the true target video's over the whole clip (1: moves as the target camera moves; 0:
unrelated). With --poses also pycolmap's estimate (evaluate.py's estimator, pose_estimation.py) of the last frame's
rotation relative to the first, beside the true one: a reconstruction can succeed and still find a camera that
hardly moved, which scores near the static-camera baseline of RotErr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from summarize import true_targets  # this folder's (the script's own directory is on sys.path)


def flow(video: np.ndarray) -> np.ndarray:
    """uint8 [T, H, W, 3] -> Farneback flow [T-1, H, W, 2] (pixels) between consecutive frames."""
    import cv2

    gray = [cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) for frame in video]
    return np.stack([cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)
                     for a, b in zip(gray, gray[1:])])


def motion(video_flow: np.ndarray, true_flow: np.ndarray) -> tuple[float, float]:
    """(summed mean flow magnitude [px], cosine to the true flow) of flows [T-1, H, W, 2] of one clip."""
    a, b = video_flow.reshape(-1, 2), true_flow.reshape(-1, 2)
    cosine = float((a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-9))
    return float(np.linalg.norm(video_flow, axis=-1).mean(axis=(1, 2)).sum()), cosine


def last_frame_rotation(c2w: np.ndarray) -> float:
    """Degrees of rotation of the last camera [T, 4, 4] relative to the first."""
    from track2view.eval.metrics.pose_errors import geodesic, relative_to_first

    return float(np.degrees(geodesic(np.eye(3)[None], relative_to_first(c2w)[-1:, :3, :3]))[0])


def summarize_row(out_dir: Path, row: str, manifest, true_flows: dict, poses: bool) -> str:
    """One line for `row`: its clips' mean apparent motion and flow cosine ({clip key: true flow}), and with
    `poses` pycolmap's estimated last-frame rotation beside the true one."""
    from track2view.eval.metrics.pose_estimation import PoseFailure, estimate_poses
    from track2view.io import read_video

    moved, cosines, rotations, failed = [], [], [], 0
    for entry in manifest.clips:
        video = read_video(out_dir / "eval" / "generated" / row / entry.key / "video.mp4")[0]
        size, cosine = motion(flow(video), true_flows[entry.key])
        moved.append(size)
        cosines.append(cosine)
        if poses:
            try:
                estimated = estimate_poses(video, entry.intrinsics, num_threads=1)
            except PoseFailure:
                failed += 1
                continue
            rotations.append((last_frame_rotation(entry.target_c2w), last_frame_rotation(estimated)))
    line = (f"{row}: {len(moved)} clips, apparent motion {np.mean(moved):.1f} px, cosine to the true target's flow "
            f"{np.mean(cosines):+.2f}")
    if poses and rotations:
        true, estimated = np.array(rotations).T
        line += (f"; pycolmap, last frame vs first: true {true.mean():.1f} deg, estimated {estimated.mean():.1f} deg "
                 f"({len(rotations)} reconstructed, {failed} failed)")
    return line


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", required=True, help="the experiment's run folder (RUN/eval/manifest.json, generated/)")
    p.add_argument("--rows", required=True, help="space-separated rows of RUN/eval/generated")
    p.add_argument("--poses", action="store_true", help="also pycolmap's estimated rotation (seconds per clip)")
    a = p.parse_args(argv)
    out_dir = Path(a.out_dir)
    manifest, targets = true_targets(out_dir)
    true_flows = {key: flow(video) for key, video in targets.items()}
    for row in a.rows.split():
        print(summarize_row(out_dir, row, manifest, true_flows, a.poses), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

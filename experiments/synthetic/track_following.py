r"""Does a `tracks` model place content where its target tracks say? Its re-renders with the target view's tracks
moved right (`evaluate.py generate --shift-target-tracks DX`) against its re-renders with the true tracks.

    python experiments/synthetic/track_following.py --out-dir RUN --row tracks --shifted tracks_shifted --shift 0.25

Per frame (--frames), the horizontal displacement of the shifted row's frame relative to the same clip's frame of
`--row` (OpenCV's phase correlation, pixels), averaged over the clips both rows hold, and the gain: displacement over
the shift in pixels (1: the content moves with the tracks; 0: the tracks' positions are ignored). A model can change
its re-render a lot and still gain 0, as the shipped one does (docs/results.md): the PSNR between the two rows is
printed beside the gain to tell the two apart.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from summarize import frame_psnrs  # this folder's (the script's own directory is on sys.path)


def displacement(a: np.ndarray, b: np.ndarray) -> float:
    """Horizontal displacement [px] of frame b relative to frame a (uint8 [H, W, 3])."""
    import cv2

    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY).astype(np.float32) for f in (a, b)]
    (dx, _), _ = cv2.phaseCorrelate(*gray)
    return float(dx)


def following(base_dir: Path, shifted_dir: Path, frames: list[int]) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(mean displacement [px] per frame, mean PSNR between the rows per frame, clips, frame width [px]) over the
    clips both rows hold."""
    from track2view.io import read_video

    keys = sorted(p.parent.name for p in shifted_dir.glob("*/video.mp4")
                  if (base_dir / p.parent.name / "video.mp4").is_file())
    if not keys:
        raise SystemExit(f"error: no clip is in both {base_dir} and {shifted_dir}; generate both rows first")
    moved, similar = [], []
    for key in keys:
        a, b = (read_video(d / key / "video.mp4")[0] for d in (base_dir, shifted_dir))
        if max(frames) >= min(len(a), len(b)):
            raise SystemExit(f"error: --frames {max(frames)} is past the clip's {min(len(a), len(b))} frames ({key})")
        moved.append([displacement(a[t], b[t]) for t in frames])
        similar.append(frame_psnrs(a[frames], b[frames]))
    return np.mean(moved, 0), np.mean(similar, 0), len(keys), a.shape[2]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", required=True, help="the experiment's run folder (RUN/eval/generated/<row>)")
    p.add_argument("--row", default="tracks", help="re-renders with the true tracks")
    p.add_argument("--shifted", default="tracks_shifted", help="re-renders with the target tracks shifted")
    p.add_argument("--shift", type=float, required=True, help="the --shift-target-tracks of the shifted row")
    p.add_argument("--frames", default="0,12,24", help="frames to measure (comma-separated)")
    a = p.parse_args(argv)
    generated = Path(a.out_dir) / "eval" / "generated"
    frames = [int(t) for t in a.frames.split(",")]
    moved, similar, clips, width = following(generated / a.row, generated / a.shifted, frames)
    expected = a.shift * width
    print(f"{a.shifted} vs {a.row} ({clips} clips; target tracks moved {expected:+.1f} px):")
    for t, dx, db in zip(frames, moved, similar):
        print(f"  frame {t:3d}: content moved {dx:+6.1f} px, gain {dx / expected:+.2f}; "
              f"PSNR between the rows {db:.1f} dB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

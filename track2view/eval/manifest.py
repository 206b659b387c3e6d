"""The manifest: which clips a benchmark scores, each with its prompt and target trajectory, written once.

Every method is scored on the same manifest, so on the same clips, prompts and target cameras. JSON layout:

    {"format": "track2view-eval-manifest", "version": 1, "benchmark": "realcam-vid" | "synthetic",
     "root": videos root (absolute when written; `--root` overrides), "num_frames": T, "seed": int,
     "clips": [{"key": str (also the clip's folder name), "split": "static" | "dynamic",
                "source_video": path relative to root, "target_video": path or null (synthetic only),
                "prompt": generation prompt, "clip_text": CLIP-T text, "intrinsics": [3][3] normalized K,
                "trajectory": {"name", "amount", "unit", "aim"},
                "target_c2w": [T][4][4] target camera-to-world relative to the source camera at frame 0,
                              OpenCV axes, metres}, ...]}
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from track2view.eval.errors import EvalInputError
from track2view.io import write_json

FORMAT, VERSION = "track2view-eval-manifest", 1
SPLITS = ("static", "dynamic")
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class ManifestClip:
    key: str
    split: str
    source_video: str
    prompt: str
    clip_text: str
    intrinsics: np.ndarray  # [3, 3] normalized
    target_c2w: np.ndarray  # [T, 4, 4] relative to the source camera at frame 0, metres
    trajectory: dict = field(default_factory=dict)
    target_video: str | None = None

    def to_json(self) -> dict:
        out = asdict(self)
        out["intrinsics"], out["target_c2w"] = self.intrinsics.tolist(), self.target_c2w.tolist()
        return out


@dataclass
class Manifest:
    benchmark: str
    root: str
    num_frames: int
    seed: int
    clips: list[ManifestClip]

    def video_path(self, relative: str, root: str | Path | None = None) -> Path:
        return Path(root or self.root) / relative

    def by_key(self) -> dict[str, ManifestClip]:
        return {c.key: c for c in self.clips}

    def fingerprint(self) -> str:
        """A digest of the clips (keys, prompts, trajectories), independent of where the videos live."""
        content = [(c.key, c.split, c.prompt, np.round(c.target_c2w, 6).tolist()) for c in self.clips]
        return hashlib.sha256(json.dumps(content).encode()).hexdigest()[:16]

    def write(self, path: str | Path) -> Path:
        body = {"format": FORMAT, "version": VERSION, "benchmark": self.benchmark, "root": self.root,
                "num_frames": self.num_frames, "seed": self.seed, "clips": [c.to_json() for c in self.clips]}
        return write_json(path, body, indent=None)


def _clip(entry: dict, num_frames: int, where: str) -> ManifestClip:
    try:
        clip = ManifestClip(key=str(entry["key"]), split=str(entry["split"]), source_video=str(entry["source_video"]),
                            prompt=str(entry.get("prompt", "")), clip_text=str(entry.get("clip_text", "")),
                            intrinsics=np.asarray(entry["intrinsics"], dtype=np.float64),
                            target_c2w=np.asarray(entry["target_c2w"], dtype=np.float64),
                            trajectory=dict(entry.get("trajectory", {})), target_video=entry.get("target_video"))
    except (KeyError, TypeError, ValueError) as e:
        raise EvalInputError(f"{where}: malformed clip entry ({type(e).__name__}: {e})") from None
    if not _KEY.match(clip.key):
        raise EvalInputError(f"{where}: clip key {clip.key!r} is not a safe folder name")
    if clip.split not in SPLITS:
        raise EvalInputError(f"{where}: split must be one of {SPLITS}, got {clip.split!r}")
    if clip.intrinsics.shape != (3, 3) or clip.target_c2w.shape != (num_frames, 4, 4):
        raise EvalInputError(f"{where}: intrinsics must be [3, 3] and target_c2w [{num_frames}, 4, 4], got "
                             f"{list(clip.intrinsics.shape)} and {list(clip.target_c2w.shape)}")
    return clip


def read_manifest(path: str | Path) -> Manifest:
    """Read and validate a manifest written by `Manifest.write` (evaluate.py manifest)."""
    path = Path(path)
    if not path.is_file():
        raise EvalInputError(f"manifest not found: {path}")
    try:
        body = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EvalInputError(f"{path} is not a JSON manifest: {e}") from None
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise EvalInputError(f"{path} is not a track2view evaluation manifest (write one with `evaluate.py manifest`)")
    if body.get("version") != VERSION:
        raise EvalInputError(f"{path}: manifest version {body.get('version')} is not supported (expected {VERSION})")
    num_frames = int(body["num_frames"])
    clips = [_clip(e, num_frames, f"{path} clip {i}") for i, e in enumerate(body.get("clips", []))]
    if not clips:
        raise EvalInputError(f"{path} lists no clips")
    keys = [c.key for c in clips]
    if len(set(keys)) != len(keys):
        raise EvalInputError(f"{path}: clip keys are not unique")
    return Manifest(str(body["benchmark"]), str(body["root"]), num_frames, int(body.get("seed", 0)), clips)

"""Curation planning: the settings, the camera pairs of every scene, and which shard (and rank) holds each.

The plan is a function of (root content, pairs per scene, seed): pair i goes to shard i // samples_per_shard,
shard k to rank k % world_size. So a shard's content does not depend on how many ranks write the shards.
"""

from __future__ import annotations

import hashlib
import os
import re
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

SHARD_PATTERN = "shard-{:06d}.tar"


@dataclass
class CurateConfig:
    tracker: str = "oracle"
    tracker_options: dict = field(default_factory=dict)
    pairs_per_scene: int = 2
    seed: int = 0
    num_tracks: int = 1152
    query_sampling: str = "grid"       # "grid" (jittered grid) or "random"
    query_frames: str = "first_last"   # source frames of the queries: "first_last" (paper), "first", "random"
    samples_per_shard: int = 64
    num_frames: int | None = None      # expected frames per video; None: the extrinsics file's frame count
    first_frame_tolerance: float = 6.0  # max mean |A[0] - B[0]| in 0..255 levels
    min_valid_tracks: int = 64         # tracks valid in both views at least once

    def check(self) -> "CurateConfig":
        """Raise ValueError naming the first value that cannot work (before any scene is read)."""
        from track2view.trackers.queries import MAX_QUERIES, QUERY_FRAMES

        problems = [(self.samples_per_shard < 1, f"--samples-per-shard must be >= 1, got {self.samples_per_shard}"),
                    (self.pairs_per_scene < 1, f"--pairs-per-scene must be >= 1, got {self.pairs_per_scene}"),
                    (not 2 <= self.num_tracks <= MAX_QUERIES,
                     f"--num-tracks must be in [2, {MAX_QUERIES}] (more only exhausts the tracker's memory), got "
                     f"{self.num_tracks}"),
                    (self.num_frames is not None and self.num_frames < 5,
                     f"--num-frames must be >= 5 (leave it out to take the cameras file's count), got {self.num_frames}"),
                    (self.query_frames not in QUERY_FRAMES,
                     f"--query-frames must be one of {', '.join(QUERY_FRAMES)}, got {self.query_frames!r}"),
                    (self.min_valid_tracks < 1, f"--min-valid-tracks must be >= 1, got {self.min_valid_tracks}"),
                    (not self.first_frame_tolerance >= 0,
                     f"--first-frame-tolerance must be >= 0 (0..255 levels), got {self.first_frame_tolerance}")]
        for bad, message in problems:
            if bad:
                raise ValueError(message)
        return self


@dataclass(frozen=True)
class Pair:
    lens: str
    scene: str
    scene_dir: str
    source: str  # camera names, e.g. cam01
    target: str

    @property
    def key(self) -> str:
        """`<lens>-<scene>-<A>-<B>` with dots replaced (webdataset splits keys at dots)."""
        return f"{self.lens}-{self.scene}-{self.source}-{self.target}".replace(".", "_")

    def video(self, camera: str) -> Path:
        return Path(self.scene_dir) / "videos" / f"{camera}.mp4"


@dataclass(frozen=True)
class ShardJob:
    """Shard `index`: its pairs, in plan order."""

    index: int
    pairs: tuple[Pair, ...]

    @property
    def name(self) -> str:
        return SHARD_PATTERN.format(self.index)

    @property
    def keys(self) -> list[str]:
        return [p.key for p in self.pairs]


def _natural(s: str):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", s)]


def find_scenes(root: str | os.PathLike) -> list[tuple[str, str, Path, list[str]]]:
    """(lens, scene name, scene dir, camera names) of every `<root>/<lens>/scene*/videos/*.mp4` scene, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"--root {root} is not a directory; expected MultiCamVideo's train/ folder "
                                f"(<root>/<lens>/scene<N>/videos/camXX.mp4)")
    scenes = []
    for scene_dir in sorted(root.glob("*/scene*/"), key=lambda p: (p.parent.name, _natural(p.name))):
        videos = sorted((p.stem for p in (scene_dir / "videos").glob("*.mp4")), key=_natural)
        if videos:
            scenes.append((scene_dir.parent.name, scene_dir.name, scene_dir, videos))
    return scenes


def choose_pairs(cameras: list[str], count: int, rng: np.random.Generator) -> list[tuple[str, str]]:
    """`count` distinct ordered (source, target) pairs of different cameras (all of them if fewer exist)."""
    pairs = [(a, b) for a in cameras for b in cameras if a != b]
    pick = rng.permutation(len(pairs))[:count]
    return [pairs[i] for i in pick]


def stable_seed(*parts) -> int:
    return zlib.crc32("/".join(map(str, parts)).encode())


def plan_pairs(root: str | os.PathLike, pairs_per_scene: int, seed: int) -> list[Pair]:
    """Every pair to curate, in a deterministic order (scene order, then the scene's seeded choice)."""
    out = []
    for lens, scene, scene_dir, cams in find_scenes(root):
        rng = np.random.default_rng([seed, stable_seed(lens, scene)])
        out += [Pair(lens, scene, str(scene_dir), a, b) for a, b in choose_pairs(cams, pairs_per_scene, rng)]
    return out


def plan_hash(pairs: list[Pair]) -> str:
    return hashlib.sha256("\n".join(p.key for p in pairs).encode()).hexdigest()[:16]


def plan_shards(pairs: list[Pair], samples_per_shard: int) -> list[ShardJob]:
    """All shards of the plan: shard k holds pairs [k * S, (k + 1) * S)."""
    S = samples_per_shard
    return [ShardJob(k, tuple(pairs[k * S:(k + 1) * S])) for k in range((len(pairs) + S - 1) // S)]


def shards_of_rank(jobs: list[ShardJob], rank: int, world_size: int) -> list[ShardJob]:
    """The shards rank `rank` of `world_size` writes: every world_size-th, starting at `rank`."""
    return [j for j in jobs if j.index % world_size == rank]


def settings_of(config: CurateConfig, root: Path, pairs: list[Pair]) -> dict:
    """What a resumed run must match (not the rank layout: shards do not depend on it)."""
    return {**asdict(config), "root": str(Path(root).resolve()), "plan": plan_hash(pairs)}


def resolve_rank(rank: int | None = None, world_size: int | None = None, environ=None) -> tuple[int, int]:
    """(rank, world size): the arguments where given, else from the environment, the first of
    torchrun's RANK / WORLD_SIZE; a SLURM array's SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN /
    SLURM_ARRAY_TASK_COUNT (one array task per GPU); a SLURM step's SLURM_PROCID / SLURM_NTASKS
    (`srun --ntasks N`); else (0, 1). ValueError unless 0 <= rank < world size."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" in env:
        found = int(env.get("RANK", 0)), int(env["WORLD_SIZE"])
    elif "SLURM_ARRAY_TASK_COUNT" in env:
        found = (int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", 0)),
                 int(env["SLURM_ARRAY_TASK_COUNT"]))
    elif "SLURM_NTASKS" in env:
        found = int(env.get("SLURM_PROCID", 0)), int(env["SLURM_NTASKS"])
    else:
        found = 0, 1
    rank = found[0] if rank is None else rank
    world_size = found[1] if world_size is None else world_size
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"--rank {rank} must be in [0, --world-size {world_size})")
    return rank, world_size

"""`evaluate.py generate`: re-render every clip of a manifest along its target trajectory, resumable, sharded.

Each clip goes through `track2view.inference.rerender.Rerenderer` (the pipeline loaded once per process) with
its target cameras as a pose file (relative to the source camera at frame 0, metres) and its prompt, into
<out>/<key>/ (layout in clips.py), written as one atomic folder: a clip folder that exists is complete and is
skipped. Shards (--parallel clips): clip i belongs to rank i mod world_size (`--rank/--world-size`, else
$RANK/$WORLD_SIZE, else SLURM's); each rank uses cuda:$LOCAL_RANK when no --device is given. --parallel context:
every rank takes part in every clip (track2view/inference/parallel.py); rank 0 decides which clips are left,
and alone writes them.
"""

from __future__ import annotations

import os
from pathlib import Path

from track2view.eval import clips as clip_files
from track2view.eval.errors import EvalInputError
from track2view.eval.manifest import Manifest, read_manifest
from track2view.inference.parallel import from_rank0
from track2view.io import atomic_directory, write_json

CLIP_KIND = "track2view-eval-clip"


def shard(rank: int | None, world_size: int | None) -> tuple[int, int]:
    env = os.environ
    rank = rank if rank is not None else int(env.get("RANK", env.get("SLURM_PROCID", 0)))
    world_size = world_size if world_size is not None else int(env.get("WORLD_SIZE", env.get("SLURM_NTASKS", 1)))
    if world_size < 1 or not 0 <= rank < world_size:
        raise EvalInputError(f"rank {rank} is outside world size {world_size}")
    return rank, world_size


def default_device(device: str | None) -> str | None:
    if device is not None:
        return device
    import torch

    return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else None


def _record_generation(out: Path, manifest: Manifest, settings: dict) -> None:
    import json

    path = out / clip_files.GENERATION
    if path.is_file():
        previous = json.loads(path.read_text()).get("manifest_fingerprint")
        if previous != manifest.fingerprint():
            raise EvalInputError(f"--out {out} holds clips generated from another manifest; choose a new folder")
        return
    write_json(path, {"manifest_fingerprint": manifest.fingerprint(), "benchmark": manifest.benchmark, **settings})


def render_clip(rerenderer, request_options: dict, manifest: Manifest, entry, out: Path, root=None) -> Path:
    """Re-render one clip into <out>/<key>/ (atomically); returns the folder."""
    from track2view.inference.rerender import CAMERA_KINDS, RerenderRequest
    from track2view.inference.trajectories import save_poses

    with_camera = rerenderer.kind in CAMERA_KINDS  # a "none" model re-renders without the target cameras
    with atomic_directory(out / entry.key, CLIP_KIND) as folder:
        save_poses(folder / clip_files.POSES, entry.target_c2w)
        request = RerenderRequest(video=str(manifest.video_path(entry.source_video, root)),
                                  out=str(folder / clip_files.VIDEO),
                                  poses=[str(folder / clip_files.POSES)] if with_camera else [],
                                  prompt=entry.prompt, num_frames=manifest.num_frames, save_tracks=with_camera,
                                  **request_options)
        written = render_request(rerenderer, request, entry.key)
        tracks = [p for p in written if p.suffix == ".npz"]
        if tracks:
            os.replace(tracks[0], folder / clip_files.TRACKS)
        write_json(folder / clip_files.RECORD, entry.to_json())
    return out / entry.key


def render_request(rerenderer, request, key: str) -> list[Path]:
    """`rerenderer.render(request)`, its bad-input errors raised as EvalInputError naming the clip `key`."""
    from track2view.inference.rerender import InputError
    from track2view.inference.trajectories import TrajectoryError

    try:
        return rerenderer.render(request)
    except (InputError, TrajectoryError) as e:
        raise EvalInputError(f"clip {key}: {e}") from None


def generate(manifest: Manifest, out, rerenderer, request_options: dict, rank: int = 0, world_size: int = 1,
             root=None, settings: dict | None = None, progress: bool = True) -> list[Path]:
    """Generate this rank's clips of `manifest` that are not in `out` yet; returns their folders. Under context
    parallelism (the rerenderer's) rank 0 finds them and writes them; the other ranks take part in each."""
    from tqdm import tqdm

    todo = from_rank0(lambda: pending_clips(manifest, Path(out), settings or {}, rank, world_size, root))
    if not rerenderer.writes_files:
        for entry in todo:  # rank 0 sends each clip's request
            render_request(rerenderer, None, entry.key)
        return []
    bar = tqdm(todo, desc=f"generate {rank}/{world_size}", unit="clip", disable=None if progress else True)
    return [render_clip(rerenderer, request_options, manifest, entry, Path(out), root) for entry in bar]


def pending_clips(manifest: Manifest, out: Path, settings: dict, rank: int, world_size: int, root=None) -> list:
    """This rank's clips of `manifest` that `out` does not hold yet (recording the generation settings first)."""
    out.mkdir(parents=True, exist_ok=True)
    _record_generation(out, manifest, settings)
    todo = [c for c in manifest.clips[rank::world_size] if not (out / c.key / clip_files.RECORD).is_file()]
    for entry in todo:
        source = manifest.video_path(entry.source_video, root)
        if not source.is_file():
            raise EvalInputError(f"source video of clip {entry.key} not found: {source} (pass --root)")
    return todo


def generate_from_args(a) -> list[Path]:
    """evaluate.py generate's options -> `generate`."""
    from track2view.inference.guidance import parse_interval
    from track2view.inference.parallel import context_from_flags
    from track2view.inference.rerender import InputError, Rerenderer
    from track2view.inference.speed import speed_options_from

    manifest = read_manifest(a.manifest)
    try:
        interval, speed = parse_interval(a.guidance_interval), speed_options_from(a)
        context = context_from_flags(a.parallel, a.ulysses_degree, a.ring_degree)
    except ValueError as e:
        raise EvalInputError(str(e)) from None
    if context is not None and (a.rank is not None or a.world_size is not None):
        raise EvalInputError("--rank/--world-size share the clips out (--parallel clips); under --parallel context "
                             "every process takes part in every clip: drop them")
    rank, world_size = (0, 1) if context is not None else shard(a.rank, a.world_size)
    options = dict(tracker=a.tracker, tracker_options=a.tracker_option, steps=a.steps, guidance=a.guidance,
                   guidance_interval=interval, seed=a.seed, height=a.height, width=a.width, drop_tracks=a.drop_tracks,
                   shift_target_tracks=a.shift_target_tracks)
    if a.num_queries:
        options["num_queries"] = a.num_queries
    if a.query_frames:
        options["query_frames"] = a.query_frames
    try:
        rerenderer = Rerenderer(a.model, a.checkpoint, device=a.device if context else default_device(a.device),
                                dtype=a.dtype, speed=speed, context=context)
    except InputError as e:
        raise EvalInputError(str(e)) from None
    settings = {"model": str(a.model), "checkpoint": a.checkpoint, **{k: v for k, v in options.items()
                                                                       if k != "tracker_options"},
                "speed": {"cache": a.cache, "cache_options": a.cache_option, "attention_backend": a.attention_backend,
                          "vae_tiling": a.vae_tiling, "offload": a.offload}, "parallel": a.parallel}
    return generate(manifest, a.out, rerenderer, options, rank, world_size, a.root, settings)

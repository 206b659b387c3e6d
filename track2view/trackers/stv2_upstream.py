"""Loading SpatialTrackerV2 from a clone of its repository (it is not pip-installable), read for facts only.

Facts about the upstream code this module relies on (fork xeTaiz/SpaTrackerV2 at 1673230, the newest code of
henry123-boy/SpaTrackerV2; docs/data.md has the environment it runs in):

* modules: the front end `VGGT4Track` (FRONT_MODULE), the tracker `Predictor` (PREDICTOR_MODULE) and
  `preprocess_image` (PREPROCESS_MODULE), all under the clone's top-level package `models`;
* both models are `PyTorchModelHubMixin`s: `from_pretrained(dir)` reads `config.json` and
  `model.safetensors` from a local directory; their constructors build random weights without downloads
  (`Predictor(args=config)` with `moge_as_base` false);
* `Predictor.to(device)` is overridden and returns None: it is called as a statement, never chained;
* `SpaTrack2.forward_stream` moves tensors with a hard-coded `.cuda()`: the tracker runs on CUDA only, on the
  current CUDA device (so `resolve_device` makes the chosen GPU current);
* it windows sequences longer than `Predictor.S_wind` frames itself (overlap `Predictor.overlap`) and refuses
  a window longer than `spatrack.max_len` frames;
* at import, its visualizer imports `moviepy.editor` (moviepy < 2), whose ffmpeg lookup runs at import, and
  its `TrackRefiner.py` imports `torchvision.io.write_video`, which torchvision >= 0.26 no longer has; neither
  is called on the tracking path (`install_import_shims`).
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

FRONT_MODULE = "models.SpaTrackV2.models.vggt4track.models.vggt_moe"
PREDICTOR_MODULE = "models.SpaTrackV2.models.predictor"
PREPROCESS_MODULE = "models.SpaTrackV2.models.vggt4track.utils.load_fn"
SPATRACK_FILE = Path("models") / "SpaTrackV2" / "models" / "SpaTrack.py"
FRONT_HUB = "Yuxihenry/SpatialTrackerV2_Front"
TRACKER_HUB = "Yuxihenry/SpatialTrackerV2-Offline"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CLONE_URL = "https://github.com/henry123-boy/SpaTrackerV2"


@dataclass(frozen=True)
class UpstreamModules:
    front_cls: type
    predictor_cls: type
    preprocess: object
    repo: Path


def check_clone(repo_dir: str | os.PathLike | None) -> Path:
    """The clone's root; RuntimeError / FileNotFoundError naming what is missing."""
    if not repo_dir:
        raise RuntimeError(f"spatialtracker_v2 needs repo_dir=<a clone of {CLONE_URL}> (it is not pip-installable); "
                           f"see docs/data.md")
    repo = Path(repo_dir).resolve()
    if not (repo / "models" / "SpaTrackV2").is_dir():
        raise FileNotFoundError(f"{repo} is not a SpaTrackerV2 clone: models/SpaTrackV2 is missing. Clone "
                                f"{CLONE_URL} (or a fork) and pass its root as repo_dir")
    return repo


def check_weights(path: str | None, option: str, hub: str) -> Path:
    """A local model directory (config.json + model.safetensors); pickled weights are refused."""
    if not path or not Path(path).is_dir():
        raise FileNotFoundError(f"spatialtracker_v2 needs {option}=<local directory of {hub}> (these machines cannot "
                                f"download it); got {path!r}. Download it elsewhere (`huggingface-cli download {hub} "
                                f"--local-dir DIR`) and copy it here, or pass random_weights=true for a plumbing test")
    folder = Path(path)
    missing = [f for f in (CONFIG_FILE, WEIGHTS_FILE) if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{option}={folder} lacks {missing}: a model directory holds {CONFIG_FILE} and "
                                f"{WEIGHTS_FILE} (pickled .bin/.pth weights are not loaded)")
    return folder


def install_import_shims() -> None:
    """Let the upstream modules import in a current environment without changing what tracking does.

    * moviepy 1.x looks for an ffmpeg binary at import and by default asks imageio-ffmpeg for one: default
      FFMPEG_BINARY to "auto-detect" (PATH lookup; only its visualizer would use ffmpeg);
    * `torchvision.io.write_video` (imported, never called, by TrackRefiner.py) is gone in torchvision >= 0.26:
      give it a stand-in that raises if called.
    """
    os.environ.setdefault("FFMPEG_BINARY", "auto-detect")
    try:
        import torchvision.io as tvio
    except ImportError:
        return  # the import error is reported, naming torchvision, when the upstream modules import it
    if not hasattr(tvio, "write_video"):
        def write_video(*args, **kwargs):
            raise NotImplementedError("torchvision.io.write_video was removed in torchvision 0.26; Track2View's "
                                      "SpatialTrackerV2 adapter never writes videos through it")
        tvio.write_video = write_video


def import_upstream(repo: Path) -> UpstreamModules:
    """Import the clone's modules through sys.path; ImportError naming a missing package."""
    loaded = sys.modules.get("models")
    origin = Path(getattr(loaded, "__file__", None) or next(iter(getattr(loaded, "__path__", [])), "")).resolve() \
        if loaded is not None else None
    if origin is not None and repo not in (origin, *origin.parents):
        raise ImportError(f"a package named 'models' is already imported from {origin}; SpatialTrackerV2's code "
                          f"is the top-level package 'models' of {repo}. Track in a process of its own")
    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))
    install_import_shims()
    try:
        front_cls = importlib.import_module(FRONT_MODULE).VGGT4Track
        predictor_cls = importlib.import_module(PREDICTOR_MODULE).Predictor
        preprocess = importlib.import_module(PREPROCESS_MODULE).preprocess_image
    except ImportError as e:
        raise ImportError(f"cannot import SpatialTrackerV2 from {repo}: missing package {e.name!r} ({e}). Install "
                          f"requirements/tracker.txt in the tracker's environment (docs/data.md)") from e
    return UpstreamModules(front_cls, predictor_cls, preprocess, repo)


def hardcodes_cuda(repo: Path) -> bool:
    """Whether the clone's SpaTrack.py moves tensors with `.cuda()` (then the tracker runs on CUDA only)."""
    path = repo / SPATRACK_FILE
    lines = path.read_text(errors="replace").splitlines() if path.is_file() else []
    return any(".cuda()" in line.split("#", 1)[0] for line in lines)


def resolve_device(device: str, needs_cuda: bool):
    """torch.device for `device`; "cuda" is this process's GPU (LOCAL_RANK, else SLURM_LOCALID, else 0).

    A CUDA device is made current, since the upstream code's `.cuda()` goes to the current device. Raises
    RuntimeError for a CUDA device torch cannot see, or a non-CUDA device when `needs_cuda`.
    """
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"spatialtracker_v2: device={device!r} but torch sees no CUDA device")
        index = dev.index
        if index is None:
            local = os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0"))
            index = int(local) % torch.cuda.device_count()
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    if needs_cuda:
        raise RuntimeError(f"spatialtracker_v2 runs on CUDA only: its SpaTrack2.forward_stream ({SPATRACK_FILE}) "
                           f"moves tensors with a hard-coded .cuda(); got device={device!r}")
    return dev


def random_predictor_config(track_num: int) -> dict:
    """`Predictor(args=...)` for random weights: the values of upstream's config/magic_infer_offline.yaml
    (`model:` section), with no checkpoint paths, so that nothing is read or downloaded."""
    return {
        "backbone_cfg": {"ckpt_dir": ""},
        "chunk_size": 24,
        "ckpt_fwd": True,
        "ft_cfg": {"mode": "fix", "paras_name": []},
        "resolution": 336,
        "max_len": 512,
        "Track_cfg": {"base_ckpt": "", "base": {"stride": 4, "corr_radius": 3, "window_len": 60},
                      "stablizer": True, "mode": "online", "s_wind": 500, "overlap": 4},
        "track_num": track_num,
        "moge_as_base": False,
    }


def build_models(modules: UpstreamModules, device, track_num: int, front_weights: str | None = None,
                 tracker_weights: str | None = None, random_weights: bool = False):
    """(front end, predictor), in eval mode on `device`: from local model directories, or random weights."""
    if random_weights:
        front, predictor = modules.front_cls(), modules.predictor_cls(args=random_predictor_config(track_num))
    else:
        front = modules.front_cls.from_pretrained(str(check_weights(front_weights, "front_weights", FRONT_HUB)))
        predictor = modules.predictor_cls.from_pretrained(
            str(check_weights(tracker_weights, "tracker_weights", TRACKER_HUB)))
    front.eval()
    moved = front.to(device)
    front = front if moved is None else moved
    predictor.spatrack.track_num = track_num
    predictor.eval()
    predictor.to(device)  # upstream's override returns None: never chain it
    return front, predictor


def window_limits(predictor) -> dict:
    """{"window": frames per upstream window, "overlap": frames shared by windows, "max_len": the most frames a
    window may have} of a loaded predictor."""
    return {"window": int(predictor.S_wind), "overlap": int(predictor.overlap),
            "max_len": int(getattr(predictor.spatrack, "max_len", predictor.S_wind))}

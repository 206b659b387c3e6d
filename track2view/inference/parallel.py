"""One video over several processes: diffusers' context parallelism under torchrun, and rank 0's share of the work.

    torchrun --nproc-per-node N infer.py ...            (--parallel context: the default when WORLD_SIZE > 1)

    every rank   the pipeline on its own device (cuda:LOCAL_RANK over NCCL, or the CPU over gloo); the DiT's tokens
                 split N ways by diffusers (`WanTransformer3DModel._cp_plan`: the rope outputs, per-token timesteps
                 and blocks.0's input split, proj_out's output gathered); self-attention by Ulysses (heads split,
                 all-to-all) and/or ring attention (key/value chunks of every rank in turn); every rank then holds
                 the whole prediction and steps the scheduler alike (the same seeded noise)
    rank 0 only  the checks, the tracker, the VAE encoding and the prompt embeddings (`from_rank0`: the result, or
                 the bad-input error, goes to every rank), the VAE decoding and every file written (`is_rank0`)

The conditioning hook adds its tokens at the patch embedding, before the split, so it sees the whole token grid;
a merged LoRA is in the blocks' weights; compiled blocks trace the split attention. One-way attention splits
only inside the source KV cache (track2view/model/source_kv.py): its priming call (the source tokens) and every
step (the target tokens) are split N ways.

The split (`choose_split`): a Ulysses degree must divide the head count (Wan-1.3B's 12: 2, 3, 4, 6); ring attention
needs an attention backend that returns the softmax log-sum-exp, which PyTorch SDPA (diffusers' `native`, the
default) does not. By default Ulysses takes the largest degree dividing both the process count and the heads and
ring the rest (8 processes, 12 heads: Ulysses 4 x ring 2, on CUDA with the `_native_cudnn` backend unless one is
given). The tokens of every DiT call must split into equal parts (`check_tokens`). Step caches: taylorseer and
mag (schedules fixed in advance) run on each process's share; first_block (skips decided from the tokens),
--cache-calibrate and --offload are refused (`check_speed_options`).
"""

from __future__ import annotations

import contextlib
import math
import os
import pickle
import warnings
from dataclasses import dataclass
from typing import Callable, TypeVar

from track2view.model.split_hooks import read_split_signatures
from track2view.video_size import latent_tokens

T = TypeVar("T")
RING_BACKEND_ON_CUDA = "_native_cudnn"  # ships with PyTorch, returns the log-sum-exp ring attention merges with
NO_LSE_BACKENDS = (None, "native")  # PyTorch SDPA (None: diffusers' default backend)


@dataclass(frozen=True)
class ContextDegrees:
    """The split asked for (--ulysses-degree, --ring-degree); None: chosen by `choose_split`."""

    ulysses: int | None = None
    ring: int | None = None


@dataclass(frozen=True)
class ContextSplit:
    """How one video's tokens are split: a Ulysses degree x a ring degree = the process count."""

    ulysses: int
    ring: int

    @property
    def degree(self) -> int:
        return self.ulysses * self.ring


@dataclass(frozen=True)
class ContextParallel:
    """A launched split: this rank's device, the attention backend it runs with, and what the size check needs."""

    split: ContextSplit
    device: str
    attention_backend: str | None
    patch: tuple[int, int, int]  # the DiT's patch size
    source_kv: bool  # one-way attention: each DiT call holds one half of the tokens (source_kv.py)

    def check_size(self, height: int, width: int, num_frames: int) -> None:
        """ValueError unless the DiT calls of a video of this size split into equal parts."""
        tokens = latent_tokens(height, width, num_frames, self.patch)
        check_tokens(tokens if self.source_kv else 2 * tokens, self.split,
                     f"{height}x{width}x{num_frames} with {'one-way' if self.source_kv else 'full'} attention")


def context_from_flags(mode: str | None, ulysses: int | None, ring: int | None,
                       alone: str = "none") -> ContextDegrees | None:
    """--parallel MODE (None: context under torchrun, else `alone`), --ulysses-degree, --ring-degree -> the split
    asked for, or None (no context parallelism); ValueError for degrees without --parallel context."""
    if (mode or ("context" if launched_world()[1] > 1 else alone)) != "context":
        if ulysses is not None or ring is not None:
            raise ValueError("--ulysses-degree and --ring-degree split a video over the processes of --parallel "
                             "context; add --parallel context (under torchrun) or drop them")
        return None
    return ContextDegrees(ulysses, ring)


def launch_context(asked: ContextDegrees, wan_config: dict, attention: str, device: str | None,
                   speed) -> ContextParallel:
    """Check that a Wan model (its `wan_config`, self-attention `attention`) with the speed options `speed`
    (speed.py) can split as `asked` over torchrun's processes (ValueError naming the problem), then join them."""
    import torch

    check_speed_options(speed.offload, speed.cache.preset, bool(speed.cache.calibrate_to))
    split = choose_split(launched_world()[1], int(wan_config["num_attention_heads"]), asked)
    backend = attention_backend_for(split, speed.attention_backend, device != "cpu" and torch.cuda.is_available())
    return ContextParallel(split, init_process_group(device), backend, tuple(wan_config["patch_size"]),
                           attention == "one_way")


def launched_world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) without it."""
    env = os.environ
    return int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0))


def is_rank0() -> bool:
    """Whether this process writes the files (and reports bad input): rank 0, or the only process."""
    return launched_world()[0] == 0


def choose_split(world_size: int, heads: int, asked: ContextDegrees = ContextDegrees()) -> ContextSplit:
    """The split of `world_size` processes for a model of `heads` attention heads; ValueError naming the sizes."""
    if world_size < 2:
        raise ValueError("--parallel context splits one video over several processes; launch with torchrun "
                         "--nproc-per-node N (N >= 2), or drop --parallel context")
    for flag, degree in (("--ulysses-degree", asked.ulysses), ("--ring-degree", asked.ring)):
        if degree is not None and (degree < 1 or world_size % degree):
            raise ValueError(f"{flag} {degree} does not divide the {world_size} processes (torchrun "
                             f"--nproc-per-node); choose one of {', '.join(map(str, divisors(world_size)))}")
    ulysses = asked.ulysses or (world_size // asked.ring if asked.ring else math.gcd(world_size, heads))
    ring = asked.ring or world_size // ulysses
    if ulysses * ring != world_size:
        raise ValueError(f"--ulysses-degree {ulysses} x --ring-degree {ring} must equal the {world_size} processes; "
                         f"give one of them and the other follows")
    if heads % ulysses:
        fits = [d for d in divisors(world_size) if heads % d == 0]
        raise ValueError(f"a Ulysses degree of {ulysses} does not divide the model's {heads} attention heads; use "
                         f"--ulysses-degree {' or '.join(map(str, fits))} (the rest goes to --ring-degree)")
    return ContextSplit(ulysses, ring)


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def attention_backend_for(split: ContextSplit, backend: str | None, on_cuda: bool) -> str | None:
    """The attention backend `split` runs with: `backend` (--attention-backend), or for ring attention on CUDA
    without one, RING_BACKEND_ON_CUDA; ValueError when ring attention would run on PyTorch SDPA."""
    if split.ring == 1 or backend not in NO_LSE_BACKENDS:
        return backend
    if on_cuda and backend is None:
        return RING_BACKEND_ON_CUDA
    raise ValueError(f"ring attention (ring degree {split.ring}) merges partial softmaxes by their log-sum-exp, which "
                     f"PyTorch SDPA (attention backend native) does not return; on CUDA add --attention-backend "
                     f"_native_cudnn (or flash, sage), or use a --ulysses-degree that divides the heads")


def check_tokens(tokens: int, split: ContextSplit, what: str) -> None:
    """ValueError unless `tokens` (of one DiT call, `what`) split into `split.degree` equal parts."""
    if tokens % split.degree:
        fits = [d for d in divisors(tokens) if 1 < d <= 16]
        raise ValueError(f"{what}: the DiT sees {tokens} tokens per call, which do not split into {split.degree} equal "
                         f"parts (one per process); change --height/--width/--num-frames, or run on "
                         f"{', '.join(map(str, fits)) or 'one'} processes")


def check_speed_options(offload: str, step_cache: str, calibrating: bool) -> None:
    """ValueError for the speed options context parallelism cannot run with."""
    if offload != "none":
        raise ValueError(f"--offload {offload} moves the weights between CPU and GPU, which context parallelism "
                         f"(every process holds the DiT on its GPU) does not support; drop --offload")
    if step_cache == "first_block":
        raise ValueError("--cache first_block decides from each process's share of the tokens whether to skip, so "
                         "the processes would disagree; use --cache taylorseer or mag, or --parallel none")
    if calibrating:
        raise ValueError("--cache-calibrate records magnitudes of the whole sequence; calibrate in one process "
                         "(without torchrun), then use the ratios here")


def init_process_group(device: str | None) -> str:
    """Join torchrun's process group (once; NCCL on CUDA, gloo on the CPU) and return this rank's device:
    cuda:LOCAL_RANK, or cpu when `device` is cpu or no GPU exists. ValueError for a --device naming a GPU index."""
    import torch
    import torch.distributed as dist

    if device not in (None, "cpu", "cuda"):
        raise ValueError(f"--device {device}: under context parallelism each process uses cuda:LOCAL_RANK; give "
                         f"--device cuda or cpu, or none")
    on_cuda = device != "cpu" and torch.cuda.is_available()
    local_rank = launched_world()[2]
    if on_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if on_cuda else "gloo",
                                device_id=torch.device("cuda", local_rank) if on_cuda else None)
    return f"cuda:{local_rank}" if on_cuda else "cpu"


def enable_context_parallel(transformer, split: ContextSplit) -> None:
    """diffusers' context parallelism on a `WanTransformer3DModel` (in the process group; after its attention
    backend is set, before its blocks are compiled), over a device mesh of this rank's device type."""
    import torch
    from diffusers import ContextParallelConfig
    from torch.distributed.device_mesh import init_device_mesh

    device_type = transformer.device.type
    mesh = init_device_mesh(device_type, (split.ring, split.ulysses), mesh_dim_names=("ring", "ulysses"))
    config = ContextParallelConfig(ring_degree=split.ring, ulysses_degree=split.ulysses, mesh=mesh)
    # diffusers 0.42 computes a device as rank % torch.accelerator.device_count(), 0 without a GPU (a division by
    # zero); context parallelism never uses that device, so on the CPU one is counted
    no_gpu = device_type == "cpu" and torch.accelerator.device_count() == 0
    with _one_accelerator() if no_gpu else contextlib.nullcontext():
        transformer.enable_parallelism(config=config)
    # diffusers 0.42 gathers with a torch collective that torch 2.13 deprecates, warning on every process
    warnings.filterwarnings("ignore", message=".*all_gather_tensor.* is deprecated", category=FutureWarning)
    read_split_signatures(transformer)


@contextlib.contextmanager
def _one_accelerator():
    import torch

    count = torch.accelerator.device_count
    torch.accelerator.device_count = lambda: 1
    try:
        yield
    finally:
        torch.accelerator.device_count = count


def from_rank0(compute: Callable[[], T], shared: Callable[[T], T] | None = None) -> T:
    """`compute()` on rank 0 and its result on every rank: the others receive `shared(result)` (default: all of it;
    CPU tensors and numpy arrays, pickled by torch.distributed between this job's own processes: never user data).
    An exception of rank 0 is raised on every rank. Without a process group:
    `compute()`."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return compute()
    payload: list = [None]
    if dist.get_rank() == 0:
        payload = [(None, RuntimeError("rank 0 stopped before its result was sent"))]
        try:
            result = compute()
            payload = [(shared(result) if shared else result, None)]
        except Exception as error:  # sent on, so that every rank stops with rank 0's message
            payload = [(None, _picklable(error))]
            raise
        finally:
            dist.broadcast_object_list(payload, src=0)
        return result
    dist.broadcast_object_list(payload, src=0)
    value, error = payload[0]
    if error is not None:
        raise error
    return value


def _picklable(error: Exception) -> Exception:
    """`error`, or a RuntimeError with its message if it does not survive pickling."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return RuntimeError(f"{type(error).__name__} on rank 0: {error}")


def finish() -> None:
    """Leave the process group, if this process joined one."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()

"""Loading networks from local paths only: a missing path or one holding another network is one clear error.

Never a hub download: transformers/diffusers loads pass `local_files_only=True`, and state dicts are read with
safetensors or `torch.load(weights_only=True)` (no arbitrary unpickling).
"""

from __future__ import annotations

import json
from pathlib import Path

from track2view.eval.errors import EvalInputError


def require_path(path: str | Path | None, what: str, option: str) -> Path:
    if not path:
        raise EvalInputError(f"{what} needs local weights: pass {option} PATH (see docs/evaluation.md, 'Weights')")
    path = Path(path)
    if not path.exists():
        raise EvalInputError(f"{option} {path} does not exist ({what} weights)")
    return path


def load_state_dict(path: str | Path, what: str, option: str) -> dict:
    """A flat state dict {name: tensor} from a .safetensors file or a torch checkpoint (weights only)."""
    import torch

    path = require_path(path, what, option)
    if path.is_dir():
        raise EvalInputError(f"{option} {path} is a directory; {what} weights are one file (.safetensors or .pth)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # not a weights file, or a checkpoint that needs unpickling of code
        raise EvalInputError(f"{option} {path} is not a readable weights file for {what}: "
                             f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    for key in ("state_dict", "model", "params"):  # common checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state:
        raise EvalInputError(f"{option} {path} holds no state dict for {what}")
    return state


def load_into(module, state: dict, what: str, path: str | Path, option: str, strip_prefixes=("module.",)):
    """Load `state` into `module` strictly; keys or shapes of another network are one clear error."""
    for prefix in strip_prefixes:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    own = module.state_dict()
    state = {**{k: v for k, v in own.items() if k.endswith("num_batches_tracked")}, **state}  # optional buffers
    missing = [k for k in own if k not in state]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or wrong:
        detail = f"missing {missing[:3]}" if missing else f"shape of {wrong[:3]}"
        raise EvalInputError(f"{option} {path} holds another network than {what} ({detail}, "
                             f"{len(missing)} missing and {len(wrong)} mis-shaped tensors)")
    module.load_state_dict({k: state[k] for k in own}, strict=True)
    return module


def check_config(path: str | Path, what: str, option: str, model_types: tuple[str, ...]) -> Path:
    """A transformers directory whose config.json names one of `model_types` (e.g. 'clip', 'vit')."""
    path = require_path(path, what, option)
    config = path / "config.json"
    if not config.is_file():
        raise EvalInputError(f"{option} {path} is not a transformers model directory (no config.json) for {what}")
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except json.JSONDecodeError as e:
        raise EvalInputError(f"{config} is not valid JSON: {e}") from None
    if model_type not in model_types:
        raise EvalInputError(f"{option} {path} holds a {model_type!r} model, not {what} (expected model_type "
                             f"{' or '.join(model_types)})")
    return path


def pretrained(cls, path: str | Path, what: str, option: str, model_types: tuple[str, ...], **kwargs):
    """`cls.from_pretrained(path, local_files_only=True)` after `check_config`, errors made one line."""
    path = check_config(path, what, option, model_types)
    try:
        return cls.from_pretrained(str(path), local_files_only=True, **kwargs)
    except (OSError, ValueError) as e:
        raise EvalInputError(f"{option} {path}: cannot load {what}: {str(e).splitlines()[0]}") from None

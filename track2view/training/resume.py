"""Resuming a run: what may change between the run and its resume, where the checkpoint is, one run per root.

* Settings: a resumed run continues the same optimisation, so every setting that shapes it (model, LoRA,
  conditioning, objective, optimizer and schedule, seed, video size) must equal the checkpoint's; a change is
  refused with one message naming each setting and both values. Settings that change only how fast the same
  step runs (`SPEED_SETTINGS`) and where the base lives (`model_path`, checked by the base fingerprint when it
  loads) or how validation looks (`val_sigmas`) apply, and the run says so.
* `--ckpt_path last` resumes the newest `last*.ckpt` of the run's checkpoint directories and refuses to start
  from scratch when there is none; `--ckpt_path last_or_new` resumes if there is one and starts otherwise.
* `RunLock`: one training process group per run root (an advisory lock file held by global rank 0), so that two
  runs never interleave checkpoints in one directory.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

SPEED_SETTINGS = ("gradient_checkpointing", "checkpoint_blocks", "attention_backend", "compile_blocks",
                  "ffn_chunk_tokens")
APPLICABLE_SETTINGS = SPEED_SETTINGS + ("model_path", "val_sigmas")
LAST_OR_NEW = "last_or_new"


class ResumeError(ValueError):
    """A resume that cannot continue the run as asked; the message names the problem and the fix."""


def setting_changes(saved: dict, given: dict) -> tuple[dict, dict]:
    """({name: (saved, given)} that cannot apply, {name: (saved, given)} that apply) between two hparams dicts."""
    names = sorted((set(saved) | set(given)) - {k for k in set(saved) | set(given) if k.startswith("_")})
    changed = {k: (saved.get(k), given.get(k)) for k in names if _plain(saved.get(k)) != _plain(given.get(k))}
    refused = {k: v for k, v in changed.items() if k not in APPLICABLE_SETTINGS}
    return refused, {k: v for k, v in changed.items() if k in APPLICABLE_SETTINGS}


def check_resumable(saved: dict, given: dict) -> dict:
    """Raise ResumeError if a setting that shapes the optimisation changed; return the changes that apply."""
    refused, applied = setting_changes(saved, given)
    if refused:
        listed = "; ".join(f"model.{k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in refused.items())
        raise ResumeError(f"the checkpoint was trained with other settings ({listed}); a resume continues the same "
                          f"run, so give the checkpoint's values, or start a new run (its own "
                          f"--trainer.default_root_dir, without --ckpt_path) to change them")
    return applied


def _plain(value):
    """Values as a YAML config and a checkpoint spell them alike (tuples as lists, nested mappings as dicts)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def last_checkpoints(trainer) -> list[str]:
    """Every `last*.ckpt` (file or DeepSpeed directory) in the trainer's ModelCheckpoint directories."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    found = set()
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint):
            found |= callback._find_last_checkpoints(trainer)  # Lightning's own rule for ckpt_path="last"
    return sorted(found)


def resolve_ckpt_path(ckpt_path: str | None, trainer) -> str | None:
    """The ckpt_path to hand Lightning: "last" only when there is one to resume (else ResumeError), None for
    `last_or_new` without a checkpoint; any other value unchanged."""
    if ckpt_path not in ("last", LAST_OR_NEW):
        return ckpt_path
    if last_checkpoints(trainer):
        return "last"
    if ckpt_path == LAST_OR_NEW:
        return None
    dirs = sorted({str(getattr(cb, "dirpath", None)) for cb in trainer.checkpoint_callbacks})
    raise ResumeError(f"--ckpt_path last: there is no checkpoint to resume in {', '.join(dirs) or 'the run root'}; "
                      f"drop --ckpt_path to start a new run (or pass --ckpt_path {LAST_OR_NEW} to resume when there "
                      f"is a checkpoint and start otherwise)")


class RunLock:
    """An exclusive advisory lock on `<root>/.track2view.lock`, held while the process lives (global rank 0)."""

    def __init__(self, root: str | os.PathLike):
        self.path = Path(root) / ".track2view.lock"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            raise ResumeError(f"another training run holds {self.path} ({holder}); two runs in one root would "
                              f"interleave their checkpoints: give this run its own --trainer.default_root_dir, "
                              f"or wait for the other to finish") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
        self.file.flush()
        # forked children (DataLoader workers) inherit the descriptor, and with it the lock: orphaned by a kill -9
        # they would hold it for seconds after their parent died. They drop their copy at once.
        os.register_at_fork(after_in_child=self._drop_in_child)

    def _drop_in_child(self) -> None:
        if not self.file.closed:
            self.file.close()  # the child's copy only: the parent keeps the lock

    def release(self) -> None:
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()

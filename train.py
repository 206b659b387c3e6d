"""Track2View training command line (Lightning's LightningCLI): every setting lives in a YAML config and can be
overridden on the command line.

    python train.py fit --config configs/demo.yaml                                  # CPU demo, minutes
    python train.py fit --config configs/wan2.1_t2v_1.3b.yaml --trainer.devices 8   # ZeRO-1, bf16
    python train.py fit --config configs/wan2.1_t2v_1.3b.yaml --ckpt_path last      # resume the same run
    python train.py fit --config configs/demo.yaml --print_config                   # the full resolved config
    python train.py export --ckpt outputs/demo/checkpoints/last.ckpt --out outputs/demo/export

`export` writes the inference directory (LoRA in diffusers format, conditioner safetensors, track2view.json)
that `infer.py` / `Track2ViewPipeline` load. Multi-node launches (torchrun, SLURM): docs/training.md.

A configuration or data error stops the run with one line `train.py: error: ...` and exit status 2 (a
non-finite-loss stop: status 1); set T2V_TRACEBACK=1 to get the full traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys


_RUN_LOCKS = []  # held by this process's fit (released when it ends, also when it fails)


def _cli_class():
    from lightning.pytorch.cli import LightningCLI
    from lightning.pytorch.plugins.io import TorchCheckpointIO
    from lightning.pytorch.strategies import DeepSpeedStrategy

    from track2view.training.checkpoints import AtomicCheckpointIO

    class Track2ViewCLI(LightningCLI):
        def add_arguments_to_parser(self, parser) -> None:
            # the loader reads what the model's conditioning kind needs: one setting, not two to keep in step
            parser.link_arguments("model.conditioning", "data.conditioning")

        def _parse_ckpt_path(self) -> None:
            # Lightning would replace the given settings by the checkpoint's, silently; the module compares them
            # instead and refuses a change that cannot apply (track2view/training/resume.py).
            return

        def before_fit(self) -> None:
            from lightning.pytorch.utilities import rank_zero_only

            from track2view.training.resume import RunLock, resolve_ckpt_path

            config = self.config_init["fit"]
            config["ckpt_path"] = resolve_ckpt_path(config.get("ckpt_path"), self.trainer)
            if rank_zero_only.rank == 0:  # from the launcher's environment: the strategy sets ranks only in fit
                _RUN_LOCKS.append(RunLock(self.trainer.default_root_dir))

        def before_instantiate_classes(self) -> None:
            # Logger save_dir / ModelCheckpoint dirpath may start with "${trainer.default_root_dir}" so that one
            # --trainer.default_root_dir moves logs and checkpoints together (and `--ckpt_path last` finds them).
            config = self.config[self.subcommand] if self.subcommand else self.config
            root = str(config.trainer.default_root_dir or os.getcwd())
            _substitute(config.trainer, "${trainer.default_root_dir}", root)

        def instantiate_trainer(self, **kwargs):
            trainer = super().instantiate_trainer(**kwargs)
            # Atomic checkpoint files (DeepSpeed writes directories itself: see track2view.training.strategy).
            strategy = trainer.strategy
            if not isinstance(strategy, DeepSpeedStrategy) and type(strategy.checkpoint_io) is TorchCheckpointIO:
                strategy.checkpoint_io = AtomicCheckpointIO()
            return trainer

    return Track2ViewCLI


def _substitute(node, placeholder: str, value: str):
    """Replace `placeholder` in every string of a (nested) jsonargparse Namespace / list, in place."""
    from jsonargparse import Namespace

    if isinstance(node, Namespace):
        for key, item in list(vars(node).items()):
            vars(node)[key] = _substitute(item, placeholder, value)
    elif isinstance(node, list):
        node[:] = [_substitute(item, placeholder, value) for item in node]
    elif isinstance(node, str) and placeholder in node:
        return node.replace(placeholder, value)
    return node


def fit_main(argv: list[str] | None) -> None:
    import logging

    logging.getLogger("lightning.fabric.utilities.seed").setLevel(logging.WARNING)  # the seed is in the config
    from track2view.data.datamodule import Track2ViewDataModule
    from track2view.training.module import Track2ViewModule

    try:
        _cli_class()(Track2ViewModule, Track2ViewDataModule, args=argv, seed_everything_default=0,
                     save_config_kwargs={"overwrite": True}, auto_configure_optimizers=False)
    finally:
        while _RUN_LOCKS:
            _RUN_LOCKS.pop().release()


def export_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="train.py export", description="Write the inference directory (LoRA in "
                                     "diffusers format + conditioner + track2view.json) from a training checkpoint.")
    parser.add_argument("--ckpt", required=True, help="a checkpoint written by `train.py fit` (file or DeepSpeed dir)")
    parser.add_argument("--out", required=True, help="output directory (replaced atomically)")
    parser.add_argument("--model_path", default=None,
                        help="base Wan diffusers directory, if it moved since training "
                             "(default: the one in the checkpoint)")
    args = parser.parse_args(argv)
    from track2view.training.checkpoints import export_checkpoint

    out = export_checkpoint(args.ckpt, args.out, model_path=args.model_path)
    print(f"exported {args.ckpt} -> {out}")


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from track2view.training.callbacks import NonFiniteLossError
    from track2view.errors import report_bad_input

    try:
        if args and args[0] == "export":
            export_main(args[1:])
        else:
            fit_main(argv)  # None: LightningCLI reads sys.argv itself
    except NonFiniteLossError as e:
        if os.environ.get("T2V_TRACEBACK"):
            raise
        print(f"train.py: error: {e}", file=sys.stderr)
        return 1
    except (ValueError, OSError, KeyError, MisconfigurationException) as e:
        return report_bad_input(e, prog="train.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())

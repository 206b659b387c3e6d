"""Training: the science in the LightningModule (module.py); the engineering around it: callbacks.py (metrics,
non-finite guard), validation.py (validation re-renders), strategy.py (ZeRO-1), checkpoints.py (trainable-only
atomic checkpoints and the export)."""

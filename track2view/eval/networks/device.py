"""The device a metric's network runs on: the one asked for, else the first GPU, else the CPU."""

from __future__ import annotations


def resolve_device(device: str | None = None) -> str:
    import torch

    return device or ("cuda" if torch.cuda.is_available() else "cpu")

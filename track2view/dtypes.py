"""The one dtype vocabulary of every config and command line: torch's own names."""

from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_dtype(name: str, setting: str = "dtype") -> torch.dtype:
    """torch dtype of `name` ("float32", "bfloat16", "float16"); ValueError naming `setting` otherwise."""
    if name not in DTYPES:
        raise ValueError(f"{setting}={name!r} is not a dtype; choose one of {', '.join(DTYPES)}")
    return DTYPES[name]

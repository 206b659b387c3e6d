"""The one error type of evaluation input: printed by evaluate.py as one line `error: ...` (exit 2)."""

from __future__ import annotations


class EvalInputError(ValueError):
    """Bad evaluation input: a missing or short video, a metadata file of the wrong format, a weights path that
    is missing or holds another network, a folder of generated clips that does not match its manifest."""

"""Read an `.npz` whose arrays may be pickled object arrays (RealCam-Vid's metadata), without a general unpickler.

`np.load(path, allow_pickle=True)` hands the bytes to `pickle.load`, which imports and calls whatever the file
names (`os.system`, ...). `RestrictedUnpickler` rebuilds only numpy arrays, dtypes and scalars; plain
containers (dict, list, tuple, str, numbers) need no globals at all. Any other global is refused with
`UnsafePickleError` before it is imported, so nothing in the file runs.

Written here because numpy has no restricted mode for object arrays: `allow_pickle` is all or nothing.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import numpy as np

from track2view.eval.errors import EvalInputError


class UnsafePickleError(EvalInputError):
    """The pickle names a global outside the allow-list (a file that would run code when unpickled)."""


def _numpy_core():
    """numpy 2 moved `numpy.core` to `numpy._core`; pickles name either."""
    return getattr(np, "_core", None) or np.core


def _allowed() -> dict[tuple[str, str], object]:
    core = _numpy_core()
    objects = {"_reconstruct": core.multiarray._reconstruct, "scalar": core.multiarray.scalar,
               "_frombuffer": core.numeric._frombuffer}
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = objects["_reconstruct"]
        allowed[(f"{package}.multiarray", "scalar")] = objects["scalar"]
        allowed[(f"{package}.numeric", "_frombuffer")] = objects["_frombuffer"]
    for name in ("set", "frozenset", "bytearray", "complex"):
        allowed[("builtins", name)] = __builtins__[name] if isinstance(__builtins__, dict) else getattr(
            __builtins__, name)
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds numpy arrays/dtypes/scalars and builtins containers, and refuses anything else."""

    ALLOWED = _allowed()

    def find_class(self, module: str, name: str):
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"refusing to unpickle {module}.{name}: only numpy arrays, dtypes, scalars "
                                    f"and plain containers are allowed (the file may try to run code)") from None


def _read_member(fp, name: str) -> np.ndarray:
    version = np.lib.format.read_magic(fp)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    _, _, dtype = read_header(fp)
    if not dtype.hasobject:
        fp.seek(0)
        return np.lib.format.read_array(fp, allow_pickle=False)
    try:
        array = RestrictedUnpickler(fp).load()
    except UnsafePickleError:
        raise
    except Exception as e:  # a truncated or foreign pickle stream
        raise EvalInputError(f"member {name} is not a readable pickled array: {e}") from e
    if not isinstance(array, np.ndarray):
        raise EvalInputError(f"member {name} unpickles to {type(array).__name__}, expected a numpy array")
    return array


def load_npz_restricted(path: str | Path) -> dict[str, np.ndarray]:
    """Every array of an `.npz` file {name: array}, object arrays unpickled by `RestrictedUnpickler`."""
    path = Path(path)
    if not path.is_file():
        raise EvalInputError(f"metadata file not found: {path}")
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise EvalInputError(f"{path} is not an .npz file (not a zip archive)") from None
    out = {}
    with archive:
        for member in archive.namelist():
            if not member.endswith(".npy"):
                continue
            with archive.open(member) as fp:
                try:
                    out[member[:-4]] = _read_member(fp, member)
                except EvalInputError as e:
                    raise type(e)(f"{path}: {e}") from None
                except ValueError as e:  # bad magic or header
                    raise EvalInputError(f"{path}: member {member} is not a .npy array: {e}") from None
    if not out:
        raise EvalInputError(f"{path} holds no .npy arrays")
    return out

r"""Safe unpickling of dataset batches: only plain numpy arrays and builtin containers.

`load_pickle` never calls `pickle.load`. Its `RestrictedUnpickler.find_class` resolves exactly
the globals needed to rebuild numpy arrays and scalars (`_reconstruct`, `ndarray`, `dtype`,
`scalar`, `_frombuffer`, under both the numpy 1.x ``numpy.core`` and the numpy 2.x ``numpy._core``
module paths) plus a latin-1-only stand-in for ``_codecs.encode`` (how protocol-2 pickles written
by Python 3 store bytes). Any other global (``os.system``, ``builtins.eval``, a class) raises
`UnsafePickleError` before anything from the file is called.
"""

from __future__ import annotations

import importlib
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from flowgraph.data.errors import DatasetError, UnsafePickleError, corrupt

__all__ = ["ALLOWED_GLOBALS", "RestrictedUnpickler", "load_pickle"]


def _latin1_encode(text: object, encoding: str = "latin1", errors: str = "strict") -> bytes:
    """Stand-in for ``_codecs.encode`` that only turns latin-1 text back into bytes."""
    if not isinstance(text, str) or encoding.lower() not in {"latin1", "latin-1", "iso-8859-1"}:
        raise pickle.UnpicklingError(
            f"_codecs.encode is only allowed for latin-1 text. Got {type(text).__name__} "
            f"with encoding {encoding!r}.")
    return text.encode("latin1")


def _numpy_core(submodule: str, name: str) -> Any:
    """numpy's ``_core.<submodule>.<name>`` (numpy 2) or ``core.<submodule>.<name>`` (numpy 1)."""
    try:
        module = importlib.import_module(f"numpy._core.{submodule}")
    except ImportError:  # numpy < 1.26
        module = importlib.import_module(f"numpy.core.{submodule}")
    return getattr(module, name)


_NUMPY_CORE = (("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer"))

ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
    **{(f"numpy.{core}.{sub}", name): _numpy_core(sub, name)
       for core in ("core", "_core") for sub, name in _NUMPY_CORE},
}
"""(module, name) -> object: the only globals a dataset pickle may reference."""


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler whose `find_class` allows only `ALLOWED_GLOBALS`.

    Python-2 strings are decoded as latin-1, as numpy expects for array data.
    """

    def __init__(self, file: io.BufferedIOBase, path: Path, howto: str):
        super().__init__(file, encoding="latin1")
        self._path, self._howto = path, howto

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise UnsafePickleError(
                f"refused to unpickle {self._path}: it references the global {module}.{name}, "
                "but a dataset batch may only hold numpy arrays, numbers, strings, bytes, "
                "lists and dicts (allowed globals: "
                f"{', '.join(sorted(f'{m}.{n}' for m, n in ALLOWED_GLOBALS))}). Nothing from "
                f"the file was executed. Got {module}.{name}.",
                path=self._path, howto=self._howto)
        return ALLOWED_GLOBALS[module, name]

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(
            f"refused to unpickle {self._path}: persistent ids are not allowed. Got {pid!r}.",
            path=self._path, howto=self._howto)


def load_pickle(path: Path, what: str, howto: str) -> Any:
    """Unpickle `path` with `RestrictedUnpickler`; every failure becomes a `DatasetError`."""
    try:
        with open(path, "rb") as file:
            return RestrictedUnpickler(file, path, howto).load()
    except DatasetError:
        raise
    except OSError as e:
        raise DatasetError(f"cannot read {what} {path}: {e}. Got an unreadable file.",
                           path=path, howto=howto) from e
    except Exception as e:  # any unpickling failure means a corrupt file
        raise corrupt(path, what, "it does not unpickle", f"{type(e).__name__}: {e}",
                      howto) from e

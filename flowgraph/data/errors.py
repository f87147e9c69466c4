r"""Errors of the dataset layer: missing, corrupt or unsafe files, and bad dataset options."""

from __future__ import annotations

from pathlib import Path

from flowgraph.errors import FlowgraphError

__all__ = ["DatasetError", "DatasetOptionError", "UnsafePickleError", "corrupt", "missing"]


class DatasetError(FlowgraphError):
    """A dataset file is missing or corrupt.

    The message names the path, what was expected there, and (``howto``) how to obtain the data.
    """

    def __init__(self, message: str, *, path: str | Path | None = None, howto: str | None = None):
        self.path = Path(path) if path is not None else None
        self.howto = howto
        text = message if howto is None else f"{message}\n    how to get the data: {howto}"
        super().__init__(text)


class DatasetOptionError(DatasetError, ValueError):
    """An unknown dataset name, split, augmentation or option value (a caller mistake)."""


class UnsafePickleError(DatasetError):
    """A pickle asked for a global outside the allow-list; nothing from it was executed."""


def missing(path: Path, what: str, howto: str) -> DatasetError:
    """The error for a file or folder that is not there."""
    return DatasetError(f"{what} not found: expected {path}. Got no such path.", path=path,
                        howto=howto)


def corrupt(path: Path, what: str, problem: str, got: str, howto: str) -> DatasetError:
    """The error for a file that is there but cannot be read as `what`."""
    return DatasetError(f"{path} is not a valid {what}: {problem}. Got {got}.", path=path,
                        howto=howto)

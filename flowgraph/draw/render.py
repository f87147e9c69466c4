r"""Rendering a diagram's DOT source to a file with the `graphviz` package (and ``dot``)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from flowgraph.errors import FlowgraphError

__all__ = ["FORMATS", "SOURCE_FORMATS", "DrawError", "load_graphviz", "render"]

FORMATS = ("svg", "png", "pdf")
SOURCE_FORMATS = ("dot", "gv")
_INSTALL = ("install graphviz: apt-get install graphviz (Debian/Ubuntu), brew install graphviz "
            "(macOS), conda install graphviz")


class DrawError(FlowgraphError):
    """Drawing failed: graphviz missing, an unknown format, or ``dot`` reported an error."""

    def __init__(self, message: str, usage: bool = False):
        super().__init__(message)
        self.usage = usage


def load_graphviz() -> ModuleType:
    """The `graphviz` package, imported on first use: only drawing needs it."""
    try:
        import graphviz
    except ImportError:
        raise DrawError("drawing needs the graphviz Python package: "
                        "pip install 'flowgraph[draw]' (or pip install graphviz)") from None
    return graphviz


def render(dot_source: str, path: str | Path, fmt: str | None = None) -> Path:
    """Write `dot_source` to `path` as svg, png or pdf, laid out by graphviz's ``dot``.

    The format comes from the suffix of `path` unless `fmt` is given; ``dot``/``gv`` write
    the source itself (no graphviz needed). Returns the path written.
    """
    path = Path(path)
    fmt = (fmt or path.suffix.lstrip(".")).lower()
    if fmt not in FORMATS + SOURCE_FORMATS:
        raise DrawError(f"cannot draw to {str(path)!r}: unknown format {fmt or '(none)'!r}; "
                        f"use a file ending in .{', .'.join(FORMATS + SOURCE_FORMATS)}",
                        usage=True)
    if not path.parent.is_dir():
        raise DrawError(f"cannot write {str(path)!r}: directory {str(path.parent)!r} does "
                        "not exist", usage=True)
    if fmt in SOURCE_FORMATS:
        path.write_text(dot_source, encoding="utf-8")
        return path
    graphviz = load_graphviz()
    try:
        data = graphviz.Source(dot_source).pipe(format=fmt, quiet=True)
    except graphviz.ExecutableNotFound:
        raise DrawError(f"graphviz's `dot` program was not found on PATH; {_INSTALL}") from None
    except graphviz.CalledProcessError as e:
        err = (e.stderr or b"").decode(errors="replace").strip()
        raise DrawError(f"graphviz `dot` failed (exit {e.returncode}): "
                        f"{err or 'no output'}") from None
    except ValueError as e:  # graphviz itself refused the format
        raise DrawError(f"cannot draw to {str(path)!r}: {e}", usage=True) from None
    if not data:
        raise DrawError(f"graphviz `dot` wrote nothing for {str(path)!r}")
    path.write_bytes(data)
    return path

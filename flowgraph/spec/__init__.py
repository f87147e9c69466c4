r"""The spec language: models, YAML I/O, expressions and expansion."""

from flowgraph.spec.io import SourceMap, dump_spec, load_spec, parse_spec, read_spec
from flowgraph.spec.models import FlowSpec

__all__ = ["FlowSpec", "SourceMap", "dump_spec", "load_spec", "parse_spec", "read_spec"]

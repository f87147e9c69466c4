r"""The spec language: models, YAML I/O, expressions and expansion."""

from flowgraph.spec.io import (
    SourceMap,
    dump_spec,
    load_spec,
    parse_spec,
    parse_spec_text,
    parse_value_text,
    read_spec,
)
from flowgraph.spec.limits import DEFAULT_SPEC_LIMITS, SpecLimits, active_limits, use_limits
from flowgraph.spec.models import FlowSpec

__all__ = ["DEFAULT_SPEC_LIMITS", "FlowSpec", "SourceMap", "SpecLimits", "active_limits",
           "dump_spec", "load_spec", "parse_spec", "parse_spec_text", "parse_value_text",
           "read_spec", "use_limits"]

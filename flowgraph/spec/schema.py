r"""JSON Schema of the spec format, with every op's parameters model under ``$defs``."""

from __future__ import annotations

from typing import Any

from flowgraph.spec.models import FlowSpec

__all__ = ["spec_json_schema"]


def spec_json_schema() -> dict[str, Any]:
    """The schema editors use for completion; op params are listed per op in `x-ops`."""
    from flowgraph.ops import DEFAULT_REGISTRY

    schema = FlowSpec.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "flowgraph spec (format version 1)"
    ops = {}
    for op in DEFAULT_REGISTRY:
        ops[op.name] = {"summary": op.summary, "prior": op.is_prior,
                        "params": op.Params.model_json_schema(by_alias=True)}
    schema["x-ops"] = ops
    return schema

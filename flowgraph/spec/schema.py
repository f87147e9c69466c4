r"""JSON Schema of the spec format; the caller adds the parameters of the ops it knows."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel

from flowgraph.spec.models import FlowSpec

__all__ = ["spec_json_schema"]


def spec_json_schema(ops: Iterable[tuple[str, str, bool, type[BaseModel]]] = (),
                     nets: Iterable[tuple[str, type[BaseModel]]] = ()) -> dict[str, Any]:
    """The schema editors use for completion. `ops` are (name, summary, is_prior, params model)
    and are listed under `x-ops`; `nets` are (kind, params model), listed under `x-nets`."""
    schema = FlowSpec.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "flowgraph spec (format version 1)"
    schema["x-ops"] = {name: {"summary": summary, "prior": prior,
                              "params": params.model_json_schema(by_alias=True)}
                       for name, summary, prior, params in ops}
    schema["x-nets"] = {kind: params.model_json_schema(by_alias=True) for kind, params in nets}
    return schema

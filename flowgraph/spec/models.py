r"""The spec format (version 1) as pydantic models: what a YAML file may say, before expansion.

A spec has inputs, reusable `templates`, a list of `nodes` and the latent `outputs` with their
priors. A node entry is exactly one of:

- an **op node**: ``{id, op, in, condition?, params?}``;
- a **template instance**: ``{id, use, in, with?}``;
- a **group**: ``{id, body: [entries], output?}``.

Any of them may carry ``repeat: N`` (or a list of per-iteration variable mappings) with
``as: i`` to chain N copies, and ``when: ${expr}`` to include it conditionally. Values may use
``${expr}`` expressions (see `flowgraph.spec.expr`). Node ids become module names and
`state_dict` keys, so they are identifiers and expansion keeps them stable.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "SPEC_VERSION",
    "FlowSpec",
    "InputSpec",
    "LatentSpec",
    "NodeEntry",
    "PriorSpec",
    "TemplateSpec",
]

SPEC_VERSION = 1

Expr = str  # a string that may hold ${...}
RefList = str | list[str]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class InputSpec(_Model):
    """A graph input: data (consumed by the flow) or context (only read as a condition)."""

    shape: list[int | Expr] | Expr = Field(description="[C, H, W] for images or [D] for vectors")
    bits: int | Expr | None = Field(None, description="bit depth of discrete data (8 for images)")
    role: Literal["data", "context"] = "data"


class PriorSpec(_Model):
    """The distribution of a latent: a prior op (`standard_normal`, `channel_normal`, ...)."""

    dist: str = "standard_normal"
    params: dict[str, Any] = Field(default_factory=dict)


class NodeEntry(_Model):
    """One entry of a node list; see the module docstring for the three forms."""

    id: str = Field(description="identifier; repeats append the iteration index")
    op: str | None = None
    use: str | None = Field(None, description="name of a template to instantiate")
    body: list[NodeEntry] | None = Field(None, description="entries of a group")
    in_: RefList | None = Field(None, alias="in", description="data input reference(s)")
    condition: RefList | None = Field(None, description="condition input reference(s)")
    params: dict[str, Any] = Field(default_factory=dict)
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")
    output: str | None = Field(None, description="which body entry is the group's output")
    repeat: int | Expr | list[dict[str, Any]] | None = None
    as_: str = Field("i", alias="as", description="loop variable of a repeat")
    when: bool | Expr = True
    doc: str | None = None

    @model_validator(mode="after")
    def _one_form(self) -> NodeEntry:
        forms = [name for name, v in (("op", self.op), ("use", self.use), ("body", self.body))
                 if v is not None]
        if len(forms) != 1:
            raise ValueError("an entry needs exactly one of 'op', 'use' or 'body'"
                             + (f"; got {', '.join(forms)}" if forms else ""))
        if self.params and self.op is None:
            raise ValueError("'params' belongs to op nodes; templates take 'with'")
        if self.with_ and self.use is None:
            raise ValueError("'with' belongs to template instances ('use')")
        if self.output is not None and self.body is None:
            raise ValueError("'output' belongs to groups ('body')")
        if self.condition is not None and self.op is None:
            raise ValueError("'condition' belongs to op nodes; pass conditions to a template "
                             "through its inputs")
        if self.in_ is None and self.body is None:
            raise ValueError("'in' is required (the data input of this entry)")
        return self


class TemplateSpec(_Model):
    """A named sub-graph with arguments. Its node ids are prefixed by the instance id."""

    args: dict[str, Any] = Field(default_factory=dict, description="arguments and defaults")
    inputs: list[str] = Field(default_factory=lambda: ["x"],
                              description="names bound, in order, to the instance's 'in'")
    nodes: list[NodeEntry]
    output: str | None = Field(None, description="the instance's output (default: last node)")
    doc: str | None = None


class LatentSpec(_Model):
    """A latent: a tensor leaving the flow, scored under a prior."""

    from_: str = Field(alias="from")
    prior: PriorSpec | None = Field(None, description="default: the spec's base")
    condition: RefList | None = None


class FlowSpec(_Model):
    """A whole spec file (after `extends` is resolved)."""

    flowgraph: Literal[1] = Field(description="spec format version")
    name: str
    description: str | None = None
    args: dict[str, Any] = Field(default_factory=dict,
                                 description="spec arguments, overridable from the CLI (--set)")
    inputs: dict[str, InputSpec]
    templates: dict[str, TemplateSpec] = Field(default_factory=dict)
    nodes: list[NodeEntry]
    outputs: dict[str, LatentSpec]
    base: PriorSpec = Field(default_factory=PriorSpec)

r"""Conditioner networks (non-invertible) and the typed union a coupling's `net:` accepts."""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field

from flowgraph.nn.denseflow_net import DENSE_ATTENTION_NET, DENSE_RESIDUAL_NET
from flowgraph.nn.registry import NetDef, NetParams, NetRegistry
from flowgraph.nn.simple import CROSS_UNIT_NET, GLOW_NET, MLP_NET, RESNET_NET

__all__ = ["DEFAULT_NETS", "NetDef", "NetParams", "NetRegistry", "NetSpec"]

DEFAULT_NETS = NetRegistry([MLP_NET, GLOW_NET, RESNET_NET, CROSS_UNIT_NET, DENSE_ATTENTION_NET,
                            DENSE_RESIDUAL_NET])

# A discriminated union over the registry: pydantic reports errors at `net.<field>` and the
# JSON Schema lists every kind.
NetSpec = Annotated[Union[tuple(n.Params for n in DEFAULT_NETS)], Field(discriminator="kind")]  # noqa: UP007

r"""Conditioner networks (non-invertible): every `NetDef` subclass in a module of this package
is registered (see `flowgraph.core.registry.nets`)."""

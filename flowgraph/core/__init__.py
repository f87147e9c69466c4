r"""The leaf layer: tensor types, the op and conditioner contracts, and their registries.

Everything above imports from here; nothing here imports from the rest of flowgraph except
`flowgraph.errors`. Layers, bottom up: core → spec → graph → ops/nn → compile → the rest.
"""

r"""Flow ops: the runtime contract (`base`) and one file per op family. Every `OpDef` subclass
with a `name` in a module of this package is registered (see `flowgraph.core.registry.ops`)."""

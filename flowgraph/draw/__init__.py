r"""Diagrams of a spec's flow graph, from the static analysis alone, through `graphviz`.

`diagram` builds a `graphviz.Digraph` of an `Analysis` (see `flowgraph.graph.analyze`),
`to_dot` is its DOT source and `render` lays that out with graphviz's ``dot``. Nothing here
knows an op by name: nodes are drawn by the role their op declares (`op_role`) and grouped by
the spec's own templates, groups and repeats (`scope_tree`). See `flowgraph.draw.views`
for the two views.
"""

from flowgraph.draw.render import FORMATS, SOURCE_FORMATS, DrawError, render
from flowgraph.draw.structure import Role, Scope, op_role, scope_tree
from flowgraph.draw.views import AUG_COLOR, COND_COLOR, UNIT_FILL, VIEWS, diagram, to_dot

__all__ = ["AUG_COLOR", "COND_COLOR", "FORMATS", "SOURCE_FORMATS", "UNIT_FILL", "VIEWS",
           "DrawError", "Role", "Scope", "diagram", "op_role", "render", "scope_tree",
           "to_dot"]

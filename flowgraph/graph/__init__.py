r"""Static analysis of a spec: expansion, graph building, structural checks and shapes.

`analyze` runs every check and raises one `SpecError` listing all problems; `check_spec`
returns them instead. Nothing here creates a tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

from flowgraph.core.registry import OpRegistry, ops
from flowgraph.errors import Issue, Location, SpecError
from flowgraph.graph.checks import check_arity, check_consumption, check_cycles
from flowgraph.graph.ir import FlowGraph, GraphNode, build_graph
from flowgraph.graph.schedule import forward_schedule, inverse_schedule
from flowgraph.graph.shapes import DEFAULT_LIMITS, Limits, Totals, infer_shapes
from flowgraph.spec.expand import expand
from flowgraph.spec.io import SourceMap
from flowgraph.spec.limits import active_limits
from flowgraph.spec.models import FlowSpec

__all__ = ["Analysis", "FlowGraph", "GraphNode", "Limits", "Totals", "analyze", "check_spec"]


@dataclass
class Analysis:
    spec: FlowSpec
    graph: FlowGraph
    totals: Totals


def _check_inputs(spec: FlowSpec, smap: SourceMap) -> list[Issue]:
    roles = [i.role for i in spec.inputs.values()]
    out = []
    if roles.count("data") != 1:
        out.append(Issue("inputs", "a spec has exactly one data input (and at most one "
                         "context input)", location=smap.locate(("inputs",)),
                         found=f"{roles.count('data')} data inputs"))
    if roles.count("context") > 1:
        out.append(Issue("inputs", "a spec has at most one context input",
                         location=smap.locate(("inputs",)),
                         found=f"{roles.count('context')} context inputs"))
    return out


def _capped(issues: list[Issue]) -> list[Issue]:
    """At most `max_issues` problems (a broken repeat can repeat one mistake 10,000 times)."""
    cap = active_limits().max_issues
    if len(issues) <= cap:
        return issues
    more = Issue("limit", f"{len(issues) - cap:,} more problems are not listed (limit "
                 f"max_issues = {cap}; raise it with --limit max_issues=N)")
    return [*issues[:cap], more]


def check_spec(spec: FlowSpec, smap: SourceMap | None = None,
               registry: OpRegistry | None = None, limits: Limits = DEFAULT_LIMITS
               ) -> tuple[Analysis | None, list[Issue]]:
    """Run every static check; returns the analysis (None if unusable) and all issues."""
    analysis, issues = _check(spec, smap, registry, limits)
    return analysis, _capped(issues)


def _check(spec: FlowSpec, smap: SourceMap | None, registry: OpRegistry | None,
           limits: Limits) -> tuple[Analysis | None, list[Issue]]:
    registry = registry if registry is not None else ops()
    smap = smap or SourceMap()
    issues = _check_inputs(spec, smap)
    if issues:
        return None, issues
    program, expand_issues = expand(spec, smap)
    issues += expand_issues
    if len(program.inputs) != len(spec.inputs):
        return None, issues
    graph, build_issues = build_graph(program, registry, smap, quiet_missing=bool(expand_issues))
    issues += build_issues
    if not expand_issues:  # nodes that failed to expand would only cascade into noise
        issues += check_arity(graph)
    cycles = check_cycles(graph)
    issues += cycles
    if cycles:
        return None, issues
    graph.forward_order = forward_schedule(graph)  # computed once, read by every later pass
    schedule = None
    if not expand_issues:
        consumption = check_consumption(graph)
        schedule, inverse_issues = inverse_schedule(graph)
        issues += consumption + inverse_issues
        if consumption:  # the inverse pass is only well defined when each tensor has one user
            schedule = None
        elif schedule is None and not issues:
            issues.append(Issue("condition-not-invertible", "the inverse pass cannot be "
                                "scheduled", location=smap.locate(("nodes",))))
    totals, shape_issues = infer_shapes(graph, limits)
    issues += shape_issues
    if len(issues) > 1:  # the global dimension tally only explains something on its own
        issues = [i for i in issues if not (i.rule == "dims" and i.node is None)]
    if not program.latents and not expand_issues:
        issues.append(Issue("latent", "a spec declares at least one latent in 'outputs'",
                            location=smap.locate(("outputs",))))
    if schedule is None:
        return None, issues
    graph.inverse_order = schedule.order
    graph.inverse_known_at = schedule.known_at
    return Analysis(spec, graph, totals), issues


def analyze(spec: FlowSpec, smap: SourceMap | None = None, registry: OpRegistry | None = None,
            limits: Limits = DEFAULT_LIMITS) -> Analysis:
    analysis, issues = check_spec(spec, smap, registry, limits)
    if issues or analysis is None:
        raise SpecError(issues or [Issue("spec", "spec could not be analysed",
                                         location=Location())])
    return analysis

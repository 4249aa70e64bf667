"""The investigation graph's wiring: plan → preregister → run_tool → record → assess →
(replicate → run_tool → record → assess) → … → report.

A LangGraph ``StateGraph`` over :class:`~rankscope.agent.state.InvestigationState`, with the
node functions of :mod:`rankscope.agent.nodes` and their dependencies in the runtime context
(:class:`~rankscope.agent.context.GraphContext`). Checkpoints live in the investigation's own
database (:mod:`rankscope.agent.checkpoints`) with the investigation id as ``thread_id``; every
invocation sets ``recursion_limit`` (from the budget) and ``durability="sync"``, so a killed
process resumes from the last finished node.
"""

from __future__ import annotations

from typing import Any, cast

from langgraph.graph import END, START, StateGraph

from rankscope.agent import nodes
from rankscope.agent.checkpoints import open_checkpointer, thread_config
from rankscope.agent.context import GraphContext
from rankscope.agent.state import InvestigationState, initial_state


def build_graph() -> StateGraph[InvestigationState, GraphContext, Any, Any]:
    """The uncompiled investigation graph (compile it with a checkpointer)."""
    graph: StateGraph[InvestigationState, GraphContext, Any, Any] = StateGraph(
        InvestigationState, context_schema=GraphContext
    )
    for node in (
        nodes.plan,
        nodes.preregister,
        nodes.run_tool,
        nodes.record,
        nodes.assess,
        nodes.replicate,
        nodes.report,
    ):
        graph.add_node(node.__name__, nodes.timed(node))
    graph.add_edge(START, "plan")
    graph.add_conditional_edges("plan", nodes.after_plan, ["report", "preregister", "plan"])
    graph.add_edge("preregister", "run_tool")
    graph.add_edge("run_tool", "record")
    graph.add_edge("record", "assess")
    graph.add_conditional_edges("assess", nodes.after_assess, ["replicate", "plan"])
    graph.add_edge("replicate", "run_tool")
    graph.add_edge("report", END)
    return graph


def invoke(
    context: GraphContext, db_url: str, investigation_id: int, *, resume: bool
) -> InvestigationState:
    """Run (or resume) the graph to its end; returns the final state.

    On any exception (KeyboardInterrupt included, and a checkpointer that cannot be opened) the
    investigation's running experiments are marked interrupted, the investigation too, and the
    exception propagates; the checkpoint and everything recorded stay, so ``resume`` continues
    from the last finished node.
    """
    store = context.store
    try:
        with open_checkpointer(db_url) as saver:
            graph = build_graph().compile(checkpointer=saver)
            config = thread_config(investigation_id, context.budget.recursion_limit())
            snapshot = graph.get_state(config)
            if resume and snapshot.values and not snapshot.next:
                return cast(InvestigationState, snapshot.values)
            payload = None if (resume and snapshot.values) else initial_state(investigation_id)
            final = graph.invoke(payload, config, context=context, durability="sync")
    except BaseException as exc:
        store.mark_interrupted(investigation_id, f"interrupted: {type(exc).__name__}: {exc}"[:500])
        store.set_investigation_status(investigation_id, "interrupted")
        raise
    return cast(InvestigationState, final)

"""The LLM planner: an OpenAI-compatible chat model proposes pre-registered experiments.

One module per job:

``planner``      ``LLMPlanner``: the ``propose`` and ``narrate`` conversations, each request
                 fitted to the model's context window before it is sent.
``catalogue``    how the tools are offered (``ToolCatalogue``: compact, reduced, full) and the
                 function specs of a request.
``ledger_text``  the step prompt: the ledger summarised within a number of characters.
``replies``      the model's replies, repaired where that is safe and read into a ``Proposal``,
                 a ``Stop``, or the answer that says what was wrong; calls written as text
                 (fenced or bare JSON) read as calls, "parsed from text".
``hints``        corrections a small model can act on: concrete metric keys, the worked
                 example call, and the fix of a call the graph's gate rejected.
``fencing``      data blocks, so that text from the data cannot pose as prompt.

The conversation itself goes through ``rankscope.agent.llm_client`` (the one client for the LLM
server) and is counted with ``rankscope.agent.llm_context``; citations in narratives are read by
``rankscope.agent.citations``.
"""

from rankscope.agent.planners.llm.catalogue import (
    CATALOGUES,
    DESCRIBE_FUNCTION,
    PROPOSE_FUNCTION,
    REQUEST_TOKEN_BUDGET,
    STOP_FUNCTION,
    ToolCatalogue,
    catalogue_line,
    describe_tool_spec,
    planner_args_schema,
    preregistered_tool_spec,
    propose_tool_spec,
    stop_tool_spec,
)
from rankscope.agent.planners.llm.fencing import data_block
from rankscope.agent.planners.llm.ledger_text import (
    LEDGER_CHARS,
    MAX_FULL_ENTRIES,
    MIN_LEDGER_CHARS,
)
from rankscope.agent.planners.llm.planner import (
    MAX_DESCRIBE_CALLS,
    REPLY_TOKENS,
    LLMPlanner,
    PlannerReply,
    call_schema,
)

__all__ = [
    "CATALOGUES",
    "DESCRIBE_FUNCTION",
    "LEDGER_CHARS",
    "MAX_DESCRIBE_CALLS",
    "MAX_FULL_ENTRIES",
    "MIN_LEDGER_CHARS",
    "PROPOSE_FUNCTION",
    "REPLY_TOKENS",
    "REQUEST_TOKEN_BUDGET",
    "STOP_FUNCTION",
    "LLMPlanner",
    "PlannerReply",
    "ToolCatalogue",
    "call_schema",
    "catalogue_line",
    "data_block",
    "describe_tool_spec",
    "planner_args_schema",
    "preregistered_tool_spec",
    "propose_tool_spec",
    "stop_tool_spec",
]

"""The LLM calls of an investigation: each request with its response (or error), and their token
totals for budgets."""

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlmodel import col

from rankscope.experiments_db.jsonutil import to_jsonable
from rankscope.experiments_db.models import Investigation, LLMCall
from rankscope.experiments_db.records import LLMUsage
from rankscope.experiments_db.store_core import StoreCore, add_row, get_row


class LLMCallStore(StoreCore):
    """Writes and reads of the ``llm_call`` table."""

    def record_llm_call(
        self,
        investigation_id: int | None,
        model: str,
        messages: Sequence[Any],
        response: Any = None,
        *,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        latency_s: float | None = None,
        error: str | None = None,
    ) -> int:
        """Store one LLM request and its response (or error)."""
        with self._write() as session:
            if investigation_id is not None:
                get_row(session, Investigation, investigation_id)
            row = LLMCall(
                investigation_id=investigation_id,
                model=model,
                messages=to_jsonable(list(messages)),
                response=to_jsonable(response),
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                latency_s=latency_s,
                error=error,
            )
            return add_row(session, row)

    def llm_usage(self, investigation_id: int) -> LLMUsage:
        """The number of LLM calls of an investigation and their token totals."""
        with self._read() as session:
            calls, prompt, completion = session.execute(
                select(
                    func.count(col(LLMCall.id)),
                    func.coalesce(func.sum(col(LLMCall.prompt_tokens)), 0),
                    func.coalesce(func.sum(col(LLMCall.completion_tokens)), 0),
                ).where(col(LLMCall.investigation_id) == investigation_id)
            ).one()
        return LLMUsage(calls=calls, prompt_tokens=prompt, completion_tokens=completion)

"""An investigation's settings: one typed model, built once (by the command line, a sweep, a test)
and stored as the investigation's ``config``."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from rankscope.agent.policy import StatsPolicy
from rankscope.agent.state import Budget
from rankscope.experiments_db.records import InvestigationRecord
from rankscope.experiments_db.repository import Store


class Lease(BaseModel):
    """The process driving an investigation now (see :mod:`rankscope.agent.lease`)."""

    host: str
    pid: int
    heartbeat: str
    """ISO time of the last renewal."""


class InvestigationSettings(BaseModel):
    """How an investigation runs: what the user asked for and what the agent recorded about it.

    Stored as JSON in ``investigation.config`` (:meth:`config`) and read back with
    :func:`settings_of`. ``planner``, ``llm_model`` and ``budget`` are stored in the
    investigation's own columns, not in ``config``. Keys written by other parts of the system
    (a sweep's cell, an import note) are kept.
    """

    model_config = ConfigDict(extra="allow")

    model_arg: str | None = Field(None, description="--model as given (None: the default).")
    data_arg: str | None = Field(None, description="--data as given (None: built-in).")
    device: str = "cpu"
    planner: str | None = Field(
        None,
        exclude=True,
        description="The planner that runs (a stored investigation's), or the one asked for "
        "(None: the LLM planner when an endpoint and llm_model are set, else the protocol "
        "planner).",
    )
    llm_model: str | None = Field(
        None, exclude=True, description="--llm-model: the model the LLM endpoint serves."
    )
    budget: Budget = Field(
        default_factory=Budget, exclude=True, description="The investigation's limits."
    )
    base_url: str | None = Field(None, description="The LLM endpoint (LLM planner only).")
    planner_why: str = Field("", description="Why this planner runs (the CLI prints it).")
    protocol_pairs: int | None = Field(None, description="Pairs per protocol experiment.")
    llm_timeout_s: float | None = Field(
        None, gt=0, description="--llm-timeout: seconds per LLM request (None: env or default)."
    )
    llm_retries: int | None = Field(
        None, ge=0, description="--llm-retries: retries after a failed LLM request (None: default)."
    )
    llm_context: int | None = Field(
        None,
        gt=0,
        description="--llm-context: the LLM's context window in tokens (None: asked of the server).",
    )
    shards: int | None = Field(
        None,
        ge=1,
        description="--shards: Ray actors that split each activation_patching grid (None: "
        "in-process). Only this process writes to the store.",
    )
    model_options: dict[str, Any] = Field(
        default_factory=dict,
        description="Loader options the user set (allow_random_weights, label).",
    )
    model: dict[str, Any] = Field(
        default_factory=dict, description="The loaded retriever as it describes itself."
    )
    policy: StatsPolicy = Field(
        default_factory=StatsPolicy,
        description="The statistical policy the verdict rules apply (--alpha, --min-queries, "
        "--policy FILE.toml).",
    )
    notes: list[str] = Field(default_factory=list, description="Notes shown in the report.")
    lease: Lease | None = Field(None, description="The live process driving the investigation.")

    def config(self) -> dict[str, Any]:
        """The JSON stored as the investigation's ``config`` (unset optional fields left out)."""
        return self.model_dump(mode="json", exclude_none=True)


def settings_of(investigation: InvestigationRecord) -> InvestigationSettings:
    """The typed settings of a stored investigation (its config and its planner, LLM model and
    budget columns)."""
    return InvestigationSettings.model_validate(
        {
            **investigation.config,
            "planner": investigation.planner,
            "llm_model": investigation.llm_model,
            "budget": investigation.budget or {},
        }
    )


def save_settings(store: Store, investigation_id: int, settings: InvestigationSettings) -> None:
    """Store the settings as the investigation's config."""
    store.update_investigation_config(investigation_id, settings.config())


def add_note(store: Store, investigation_id: int, note: str) -> None:
    """Add a note to the stored settings of the investigation (once)."""
    settings = settings_of(store.get_investigation(investigation_id))
    if note not in settings.notes:
        settings.notes.append(note)
        save_settings(store, investigation_id, settings)

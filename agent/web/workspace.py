"""The state behind the routes of the review workspace, and the dependency that hands it to them.

One :class:`Workspace` per application (``app.state.workspace``): the store, the template
environment, the CSRF secret and the audit jobs. A route takes it as a ``WorkspaceDep`` argument.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.responses import HTMLResponse

from rankscope.agent.integrity import fast_check
from rankscope.agent.web.audit_jobs import AuditJobs, Auditor
from rankscope.agent.web.links import Links
from rankscope.agent.web.rendering import environment, tree_context
from rankscope.agent.web.security import new_secret, same
from rankscope.experiments_db import Store
from rankscope.experiments_db.errors import NotFoundError
from rankscope.experiments_db.records import InvestigationTree

LINKS = Links()
MAX_ID = 2**63 - 1
"""The largest id a database row can have (SQLite's and PostgreSQL's BIGINT range)."""


def known_id(kind: str, value: int) -> int:
    """``value`` if it can name a stored row; :class:`NotFoundError` (a 404 page) if not — an
    id below 1 or past the databases' integer range names nothing."""
    if not 1 <= value <= MAX_ID:
        raise NotFoundError(f"{kind} {value} does not exist")
    return value


class Workspace:
    """The state behind the routes: the store, the templates, the CSRF secret, audit jobs."""

    def __init__(self, store: Store, auditor: Auditor | None = None) -> None:
        self.store = store
        self.env = environment()
        self.csrf = new_secret()
        self.audits = AuditJobs(store) if auditor is None else AuditJobs(store, auditor)

    def page(self, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        context = {"links": LINKS, "csrf": self.csrf, "live": True, **context}
        if context.get("inv") is not None and "integrity" not in context:
            # every page of an investigation runs the checks that need no re-run (base.html
            # shows what failed)
            context["integrity"] = fast_check(self.store, context["inv"].id)
        html = self.env.get_template(template).render(**context)
        return HTMLResponse(html, status_code=status_code)

    def error(
        self, status_code: int, title: str, message: str, problems: list[str] | None = None
    ) -> HTMLResponse:
        """The styled error page."""
        return self.page(
            "error.html",
            status_code,
            title=title,
            message=message,
            problems=problems or [],
            code=status_code,
        )

    def hypothesis_page(
        self,
        hypothesis_id: int,
        *,
        form: dict[str, str] | None = None,
        error: str = "",
        status_code: int = 200,
    ) -> HTMLResponse:
        """A hypothesis's page; after a refused review, with the typed text and the reason."""
        tree = self.tree(self.store.get_hypothesis(hypothesis_id).investigation_id)
        node = next(h for h in tree.hypotheses if h.id == hypothesis_id)
        return self.page(
            "hypothesis.html",
            status_code,
            **tree_context(tree),
            node=node,
            form=form,
            error=error,
        )

    def check_csrf(self, token: str) -> None:
        if not same(token, self.csrf):
            raise HTTPException(403, "missing or wrong CSRF token: reload the page and retry")

    def tree(self, investigation_id: int) -> InvestigationTree:
        return self.store.investigation_tree(investigation_id)


async def workspace(request: Request) -> Workspace:
    """The workspace of the application serving ``request``."""
    ws: Workspace = request.app.state.workspace
    return ws


WorkspaceDep = Annotated[Workspace, Depends(workspace)]

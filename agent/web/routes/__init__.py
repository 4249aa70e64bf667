"""The routes of the review workspace, one router per page family.

- :mod:`.investigations`: the list (``/``), each investigation, hypothesis, experiment and
  evidence item (``/investigations/ID``, ``/hypotheses/ID``, ``/experiments/ID``, ``/evidence/ID``);
- :mod:`.reviews`: accepting or disputing a verdict (``POST /hypotheses/ID/review``);
- :mod:`.audits`: audits started from the page and their progress (``/audits/ID``);
- :mod:`.compare`: two investigations side by side (``/compare?a=&b=``);
- :mod:`.sweep_pages`: the sweeps and their cells (``/sweeps``, ``/sweeps/ID``);
- :mod:`.downloads`: stored artifacts (``/artifacts/ID``) and the static export as a zip file
  (``/investigations/ID/export.zip``).

:func:`rankscope.agent.web.app.create_app` includes every router of :data:`ROUTERS`.
"""

from fastapi import APIRouter

from rankscope.agent.web.routes import (
    audits,
    compare,
    downloads,
    investigations,
    reviews,
    sweep_pages,
)

ROUTERS: tuple[APIRouter, ...] = (
    investigations.router,
    reviews.router,
    audits.router,
    compare.router,
    sweep_pages.router,
    downloads.router,
)

__all__ = ["ROUTERS"]

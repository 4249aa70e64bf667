"""Model organisms: retrievers with planted rules and machine-readable ground truth.

``build_organism`` / ``build_all`` fine-tune a copy of a base bi-encoder (distillation to its own
scores plus one or two planted rules), check the rules at build time and cache the result with a
``groundtruth.json`` record (:class:`GroundTruth`); ``catalogue`` lists the organisms.
"""

from rankscope.tools.organisms.build import build_all, build_organism, cache_root, load_record
from rankscope.tools.organisms.spec import (
    PROBES,
    QUESTIONS,
    TRIGGER_WORD,
    Claim,
    GroundTruth,
    OrganismSpec,
    RuleSpec,
    catalogue,
)

__all__ = [
    "PROBES",
    "QUESTIONS",
    "TRIGGER_WORD",
    "Claim",
    "GroundTruth",
    "OrganismSpec",
    "RuleSpec",
    "build_all",
    "build_organism",
    "cache_root",
    "catalogue",
    "load_record",
]

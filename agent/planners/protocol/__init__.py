"""``ProtocolPlanner``: a deterministic investigation protocol that needs no LLM.

It is the offline default, the baseline the LLM planner is compared with, and what the tests run.
It reads only the ledger (earlier hypotheses, their verdicts and key metrics) and proposes the
first step of this protocol that has not been done yet.

0. **Intent.** The question is mapped to an intent (:mod:`~rankscope.agent.planners.intents`: a
   named axiom, manipulation or screening tool; else the most similar documented intent by the
   bundled sentence model; else an open screen). The planner states the intent and why as a note.
1. **Behaviour** (intents with an axiom). ``behavioural_test`` of the axiom (``TFC1``, ``TFC2``,
   ``TDC``, ``STMC1``, ``LNC1``, ``LNC2``, an ABNIRML manipulation; variant as named, default the
   axiom's first). The hypothesis states the axiom's predicted direction in words (LNC1: "adding
   non-query filler lowers scores"; ABNIRML manipulations are predicted to lower scores).
   Criterion: ``share_moved_predicted`` greater than 0.5 + SESOI. A pure axiom intent stops when
   the behaviour is not *supported*: there is nothing to localise.
2. **Screen** (intents with screens: trigger token → ``token_screen``; length →
   ``property_regression`` after LNC1; match position → ``property_regression``; open →
   ``axiom_screen``, ``property_regression``, ``token_screen``). Each screen is one hypothesis
   on a declared reference row (the intent's own row: a claim worth testing); its rows rank the
   hits.
3. **Follow up** every screen hit whose estimate lies beyond the SESOI of its family, largest
   (relative to the SESOI) first, while ``max_follow_ups`` and the step budget allow (leaving room
   to localise): a confirmatory hypothesis on a declared estimate of a confirmatory call — an
   ``axiom_screen`` row by ``behavioural_test`` of that perturbation (``mean_delta`` beyond the
   SESOI in the hit's direction), a ``token_screen`` token T by ``token_screen(tokens=[T])`` on
   ``token_docs`` fresh documents ("token T raises scores whatever the query":
   ``delta_absent[token=T]``, queries that do not contain T), a ``property_regression`` edit E
   by ``property_regression(edits=[E])`` (``edit_delta[edit=E]``). The screens pre-register a
   reference row: the intent's axiom row of ``axiom_screen``, the cross-fitted ``top_delta`` of
   ``token_screen``, ``edit_delta[edit=pad]`` (decrease) of ``property_regression`` — or
   ``edit_delta[edit=match_position]`` (increase: the query-term sentence first rather than
   last, the other sentences in the same random order) for the match-position intent. Hits
   left over are noted (``screened, not followed up: …``) and listed in the report's Findings.
4. **Localise** the first supported behaviour that has perturbation pairs (the axiom's, else the
   largest confirmed ``axiom_screen`` hit) as a **circuit** when the ``circuit`` tool is
   registered (:mod:`.circuits`, on ``localise_pairs`` = 48 pairs): the competing mechanisms
   stated as a note before anything is localised; **rank** every head on discovery queries and
   fix the circuit's members and size k there (exploratory: no verdict); the **group claim** —
   the k heads together restore at least ``target`` = 0.6 of the behaviour (``faithfulness``),
   replicated on held-out queries with the same members; the **random-set control** —
   ``beats_random`` above the ``patching_fraction`` SESOI; the members' **roles** when the circuit
   is supported (position-resolved patching, path patching to the output and between members,
   attention by role; exploratory descriptions); the two **mechanism** predictions (the added
   positions' final states carry most of the effect; all attention outputs jointly carry most of
   it), a refuted one ruling its mechanism out; and **single components** whose discovery effect
   is at least the SESOI (``effect[X]`` greater than 0.05, a fraction of the behaviour). Without
   the circuit tool: an exploratory **screen** of every head (``attribution_patching``, else
   exact ``activation_patching``; it claims nothing and names no head), then
5. **Confirm** the top-k heads (k = 3, ranked by their fraction of the behaviour) with exact
   ``activation_patching``: one hypothesis per head, ``effect[X]`` (the fraction of the
   behaviour's score change it restores, positive in the behaviour's direction whether it raises
   or lowers scores) greater than ``min_effect`` (at least the ``patching_fraction`` SESOI), and
6. **Characterise** the confirmed heads with a step that fits the mechanism: ``attention_by_role``
   — duplicate-token attention (injected → same token) for TFC1, TFC2, TDC and LNC2; attention
   from the document to the added filler (doc → injected) for LNC1; CLS attention to the added
   related term for STMC1; none for ABNIRML manipulations — and a joint zero ``ablation`` that
   shrinks the behaviour (a smaller increase, or a smaller decrease).
7. **Stop.**

**Fixed pairs.** When the data is a pairs file, the protocol studies the file's own perturbation
as declared (``PATH#perturbation=AXIOM/VARIANT`` or a perturbation column) instead of the intent's
screens, which build pairs a pairs file cannot give: the axiom the question names when the file
holds it, else the file's first, with a note. Pairs nobody declared (unlabelled pairs) claim no
axiom: the behaviour step asks a two-way question about "the file's perturbation" — does it raise
the scores (``mean_delta`` greater than 0), else does it lower them (less than 0), each at half
the level — and a note asks for a declaration. A supported behaviour is then localised as above.

The graph replicates every hypothesis that meets its criterion on the held-out split, so each
confirmatory step above is tested on discovery queries and replicated on held-out ones;
exploratory steps (``Proposal.exploratory``: the rank, the fallback screen, the roles) run once on
discovery, are recorded with their evidence and get no verdict. A step whose tool is not
registered is skipped, and the skip is reported (``drain_notes``) — never silently.

**Modules.** :mod:`.tables` holds the protocol's tables (predicted directions, edits in words,
attention patterns, screen rows, competing mechanisms); :mod:`.core` the settings and notes every
step shares; one module per step — :mod:`.behaviour` (1, and fixed pairs), :mod:`.screens` (2
and 3), :mod:`.localisation` (4 and 5), :mod:`.circuits` (4 with the circuit tool),
:mod:`.characterisation` (6) — and :mod:`.planner` the ``ProtocolPlanner`` that chooses which
step comes next.
"""

from rankscope.agent.planners.intents import AXIOMS
from rankscope.agent.planners.protocol.behaviour import Behaviour
from rankscope.agent.planners.protocol.planner import ProtocolPlanner, parse_axiom

__all__ = ["AXIOMS", "Behaviour", "ProtocolPlanner", "parse_axiom"]

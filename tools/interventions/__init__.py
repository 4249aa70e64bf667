"""The intervention engine behind the patching, ablation, attention and attribution tools.

- :mod:`~rankscope.tools.interventions.pairs`: aligned (baseline, perturbed) batches, position role groups.
- :mod:`~rankscope.tools.interventions.cache`: cached layer inputs; running the encoder from any layer.
- :mod:`~rankscope.tools.interventions.patching`: activation patching, two engines with equal results
  (``cached``: fast and exact; ``nnsight``: generic reference).
- :mod:`~rankscope.tools.interventions.path`: path patching (sender heads → receiver q/k/v or final).
- :mod:`~rankscope.tools.interventions.ablation_runs`: zero and mean ablation, ranking effects.
- :mod:`~rankscope.tools.interventions.masking`: attention masking between cross-encoder segments.
- :mod:`~rankscope.tools.interventions.attention`: attention mass by token role (nnsight).
- :mod:`~rankscope.tools.interventions.attribution`: attribution patching (gradient estimate).
- :mod:`~rankscope.tools.interventions.metrics`, :mod:`~rankscope.tools.interventions.report`: normalised metrics,
  aggregation; :mod:`~rankscope.tools.interventions.heatmaps`: heatmaps.
"""

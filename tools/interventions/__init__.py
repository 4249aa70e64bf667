"""The intervention engine behind the patching, ablation, attention and attribution tools.

- :mod:`~tools.interventions.pairs`: aligned (baseline, perturbed) batches, position role groups.
- :mod:`~tools.interventions.cache`: cached layer inputs; running the encoder from any layer.
- :mod:`~tools.interventions.patching`: activation patching, two engines with equal results
  (``cached``: fast and exact; ``nnsight``: generic reference).
- :mod:`~tools.interventions.path`: path patching (sender heads → receiver q/k/v or final).
- :mod:`~tools.interventions.ablation`: zero and mean ablation, ranking effects.
- :mod:`~tools.interventions.masking`: attention masking between cross-encoder segments.
- :mod:`~tools.interventions.attention`: attention mass by token role (nnsight).
- :mod:`~tools.interventions.attribution`: attribution patching (gradient estimate).
- :mod:`~tools.interventions.metrics`, :mod:`~tools.interventions.report`: normalised metrics,
  aggregation; :mod:`~tools.interventions.figures`: heatmaps.
"""

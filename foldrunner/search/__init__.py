"""Adaptive search (``search.optuna``): trials asked of an Optuna study as slots come free,
pruned fold by fold, like with like.

- :mod:`~foldrunner.search.space`: ``random.space``'s grammar as Optuna's suggestions.
- :mod:`~foldrunner.search.pruner`: the fold-aware median pruner (a pure function of the
  trials' fold scores).
- :mod:`~foldrunner.search.study`: the study in ``RUN_DIR/optuna.sqlite``, its sampler,
  and how a resume brings it in line with the journal.
- :mod:`~foldrunner.search.source`: :class:`~foldrunner.search.source.TrialSource`, the
  scheduler's source of folds: it asks, prunes and tells.

Optuna is imported only here, and only when a run uses it.
"""

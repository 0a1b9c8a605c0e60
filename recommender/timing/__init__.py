"""Timing: when a customer buys again, which items they rebuy and when.

* :mod:`~recommender.timing.summary`: the per-customer summary ``(x, t_x, T)``.
* :mod:`~recommender.timing.rows`: checking, merging and evaluating customer rows.
* :mod:`~recommender.timing.base`: :class:`TimingModel`, the shared fitting and
  prediction interface of the "buy till you die" models.
* :mod:`~recommender.timing.bgnbd`: BG/NBD and MBG/NBD.
* :mod:`~recommender.timing.pareto`: Pareto/NBD.
* :mod:`~recommender.timing.selection`: :class:`PurchaseTimingModel`, the
  choice among them that the pipeline fits, predicts with and saves.
* :mod:`~recommender.timing.repurchase`: the buy-it-again model.
* :mod:`~recommender.timing.metrics`: the timing metrics.
"""

"""Typed configuration of a training run."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from recommender.ranking.als import (
    DEFAULT_ALPHA,
    DEFAULT_FACTORS,
    DEFAULT_ITERATIONS,
    DEFAULT_REGULARIZATION,
)


@dataclass
class ALSConfig:
    """Hyperparameters of the ALS ranking model."""

    factors: int = DEFAULT_FACTORS
    """Latent dimensions."""
    regularization: float = DEFAULT_REGULARIZATION
    """L2 penalty on the factors."""
    alpha: float = DEFAULT_ALPHA
    """Confidence scale of a (weighted) interaction (BM25 weights are already
    large, so 1 is the measured best; see bench/sweep_defaults.py)."""
    iterations: int = DEFAULT_ITERATIONS
    """ALS sweeps of the published model: ``iterations - refit_iterations``
    from scratch on the history before the evaluation window (the judged
    model), then ``refit_iterations`` on the whole log, warm-started. More
    sweeps on the history did not raise nDCG@10 on the generated shops, judged
    or published."""
    weighting: str = "bm25"
    """Interaction weighting: raw, log, bm25 or tfidf."""
    half_life_days: float | None = None
    """Recency decay of each order line's weight; None keeps all lines equal."""
    refit_iterations: int = 2
    """Sweeps on the whole log, warm-started from the evaluated model."""

    @property
    def history_iterations(self) -> int:
        """Sweeps of the fit on the history (and of a search trial): at least one."""
        return max(1, self.iterations - self.refit_iterations)


@dataclass
class SearchConfig:
    """Hyperparameter search on a validation window before the evaluation window."""

    enabled: bool | None = None
    """Run the search (``--search``), never (``--no-search``), or, when None,
    only on logs of at most ``auto_max_rows`` rows, where a search takes
    seconds; otherwise the defaults above are used."""
    auto_max_rows: int = 1_000_000
    """Largest log (rows kept) searched when ``enabled`` is None."""
    time_budget_s: float = 120.0
    """Stop starting new trials after this many seconds."""
    max_trials: int = 12
    """At most this many configurations (the defaults first); 12 found the
    best-scoring configurations on the generated shops (bench/bench_quality.py)."""
    seed: int = 0
    """Seed of the random search."""


@dataclass
class TrainConfig:
    """Everything that decides what ``encore train`` builds."""

    eval_days: int = 28
    """Length of the held-out evaluation window at the end of the log, in days."""
    timing_horizon_days: float | None = None
    """Window for judging the next-purchase model; defaults to ``eval_days``, or
    with ``--as-of`` and later rows in the log, to the span of those rows (at
    most a year)."""
    timing_p_horizon_days: float | None = None
    """Horizon of the judged probability of buying; defaults to the window."""
    max_eval_customers: int = 10_000
    """Evaluate on a seeded random sample of at most this many customers (the
    standard error of nDCG@10 on 10,000 customers is well under 0.005)."""
    max_buy_again_eval_fit_customers: int | None = 100_000
    """The buy-again model judged on the window is refitted on a seeded sample
    of at most this many customers (as many as its item priors are drawn from)."""
    max_spend_fit_customers: int | None = 50_000
    """The spend model's three parameters are fitted on a seeded sample of at
    most this many repeat buyers (its likelihood costs a pass over every one
    per step; tens of thousands pin three parameters). Every customer's own
    orders still count in their expected order value."""
    popularity_days: int = 90
    """Popularity for unknown customers counts buyers over this many recent days."""
    top_n: int = 100
    """Recommendations precomputed per known customer for serving (0 disables)."""
    top_n_max_scores: float = 1e9
    """Skip the precomputation when customers x items exceeds this (serving then
    scores exactly per request, which costs well under a millisecond per 10,000
    items); it would dominate the training time of a large shop."""
    min_item_customers: int = 1
    """Items bought by fewer customers are left out of the ranking model."""
    seed: int = 0
    """Seed for every random step."""
    als: ALSConfig = field(default_factory=ALSConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    run_baselines: bool = True
    """Evaluate popularity, item-kNN and personal frequency on the same split."""
    timing: bool = True
    """Fit the next-purchase-time and buy-it-again models."""
    ranker: bool = True
    """Train the two-stage ranker (candidates, then LightGBM's lambdarank) and
    serve its list when it beats every baseline on the evaluation window."""
    ranker_train_customers: int = 20_000
    """The ranker learns from at most this many customers per label window
    (a seeded sample of those who bought in it)."""
    ranker_table_max_customers: int = 500_000
    """Every customer's ranked list is computed at training time (the served
    top-N table) for shops with at most this many customers; a larger shop's
    lists are ranked per request and per block of an export."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def hash(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

"""The purchase-timing model the pipeline uses: choosing among BG/NBD, MBG/NBD
and Pareto/NBD, predicting in days, and saving and restoring the state.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from recommender.data.sampling import seeded_subset
from recommender.errors import NotFittedError, TimingFitError, TimingStateError
from recommender.timing.base import TimingModel
from recommender.timing.bgnbd import BGNBD, MBGNBD
from recommender.timing.metrics import evaluate_timing, naive_baselines
from recommender.timing.pareto import ParetoNBD
from recommender.timing.summary import PurchaseSummary, summarize_purchases

__all__ = ["FALLBACK_PENALIZER", "MAX_MEDIAN_DAYS", "MODELS", "STATE_SCHEMA", "PurchaseTimingModel"]

#: Model classes by name, as used by :class:`PurchaseTimingModel`.
MODELS: dict[str, type[TimingModel]] = {
    BGNBD.name: BGNBD,
    ParetoNBD.name: ParetoNBD,
    MBGNBD.name: MBGNBD,
}


#: Schema tag written by :meth:`PurchaseTimingModel.to_state`.
STATE_SCHEMA = "encore.purchase_timing/1"

# Metrics where a smaller value is better, and how to rank by them.
_SELECTION_METRICS = {
    "rmse": lambda m: m["rmse"],
    "mae": lambda m: m["mae"],
    "msle": lambda m: m["msle"],
    "brier": lambda m: m["brier"],
    "log_loss": lambda m: m["log_loss"],
    "abs_bias": lambda m: abs(m["relative_bias"]) if m["relative_bias"] is not None else math.inf,
}


#: A median further away than this is reported as ``inf`` (no date): a "next
#: purchase" years out is a model extrapolation no one can act on.
MAX_MEDIAN_DAYS = 365.0


def _cap_median(days: np.ndarray) -> np.ndarray:
    out = np.asarray(days, dtype=np.float64).copy()
    out[~(out <= MAX_MEDIAN_DAYS)] = np.inf
    return out


#: L2 penalty retried when an unpenalised fit diverges (see ``_fit_one``).
FALLBACK_PENALIZER = 1e-2


class PurchaseTimingModel:
    """Next-purchase timing for every customer, choosing among the BTYD models.

    The public API speaks days; the models are fitted in ``unit_days``.

    Parameters
    ----------
    candidates : sequence of str
        Model names among ``"bgnbd"``, ``"pareto_nbd"``, ``"mbgnbd"``, in
        order of preference: a tie on the holdout goes to the earliest. The
        default puts the two with closed-form predictions first; Pareto/NBD
        integrates its purchase probability numerically, several times slower.
    holdout_days : float, optional
        When set, each candidate is fitted on the events up to
        ``as_of_day - holdout_days``, scored on the following ``holdout_days``
        and the best by ``selection_metric`` is refitted on everything up to
        ``as_of_day``. When not set, the candidate with the highest
        log-likelihood on all the data is kept (all three have four parameters).
    unit_days : float
        Time unit of the fit (7: weeks, where the parameters are of order one).
    p_alive_floor : float
        Customers with P(active) below this get ``median_days_to_next = inf``.
    penalizer : float
        L2 penalty passed to every candidate.
    selection_metric : str
        ``"rmse"`` (default), ``"mae"``, ``"msle"``, ``"brier"``, ``"log_loss"``
        or ``"abs_bias"`` (absolute relative bias of the total).
    selection_tolerance : float
        Holdout scores within this fraction of the best are a tie. Where the
        data hardly tell the models apart (a shop with hardly any churn, where
        all three reduce to the same purchase process), their scores differ by
        optimiser noise only. A tie goes to the earliest candidate, so such noise cannot pick the
        slowest model.
    probability_horizon_days : float, optional
        Window of the "buys within N days" probability scored on the holdout
        (default ``holdout_days``).
    selection_sample : int or None
        Compare candidates on a seeded sample of at most this many customers;
        None uses all. Each candidate is fitted on it, so it is most of the
        cost on a big shop, and the ranking of four-parameter models settles
        long before the sample reaches the default.
    fit_sample : int or None
        Estimate the chosen model's parameters on a seeded sample of at most
        this many customers with history (None: all). The parameters describe
        the population (four numbers), which a sample of the default size
        already pins down, so the fit stops growing with the shop. Predictions
        are for every customer either way.
    pilot_sample : int or None
        Start each fit that has no warm start from a fit on a seeded sample
        of this many of its customers (None: from the moment estimates), when
        it has at least four times as many. From near the optimum the fit on
        all of them needs a fraction of the iterations; the optimum is the
        same (``tests/test_timing.py`` checks it).
    """

    def __init__(
        self,
        candidates: Sequence[str] = ("bgnbd", "mbgnbd", "pareto_nbd"),
        holdout_days: float | None = None,
        unit_days: float = 7.0,
        p_alive_floor: float = 0.1,
        penalizer: float = 0.0,
        selection_metric: str = "rmse",
        selection_tolerance: float = 1e-3,
        probability_horizon_days: float | None = None,
        selection_sample: int | None = 50_000,
        fit_sample: int | None = 100_000,
        pilot_sample: int | None = 2_000,
    ) -> None:
        self.candidates = tuple(candidates)
        self.selection_sample = selection_sample
        self.fit_sample = fit_sample
        self.pilot_sample = pilot_sample
        self.holdout_days = holdout_days
        self.unit_days = unit_days
        self.p_alive_floor = p_alive_floor
        self.penalizer = penalizer
        self.selection_metric = selection_metric
        self.selection_tolerance = selection_tolerance
        self.probability_horizon_days = probability_horizon_days

    model_: TimingModel | None = None
    summary_: PurchaseSummary
    selection_: dict[str, Any]

    def _check_config(self) -> None:
        unknown = [c for c in self.candidates if c not in MODELS]
        if not self.candidates or unknown:
            raise ValueError(f"candidates must be among {sorted(MODELS)}; got {self.candidates}")
        if self.selection_metric not in _SELECTION_METRICS:
            raise ValueError(f"selection_metric must be one of {sorted(_SELECTION_METRICS)}")
        if not (self.unit_days > 0):
            raise ValueError("unit_days must be positive")
        if self.holdout_days is not None and not (self.holdout_days > 0):
            raise ValueError("holdout_days must be positive")
        if not (0.0 <= self.p_alive_floor < 1.0):
            raise ValueError("p_alive_floor must be in [0, 1)")
        if not (self.selection_tolerance >= 0.0):
            raise ValueError("selection_tolerance must be non-negative")

    def _fit_one(
        self,
        name: str,
        summary: PurchaseSummary,
        rows: np.ndarray | None = None,
        start: TimingModel | None = None,
    ) -> TimingModel:
        x, t_x, T = summary.in_units(self.unit_days)
        h = np.flatnonzero(summary.has_history) if rows is None else rows
        if start is None and self.pilot_sample is not None and h.size >= 4 * self.pilot_sample:
            pilot = seeded_subset(h, self.pilot_sample, seed=3)
            try:
                start = MODELS[name](penalizer=self.penalizer).fit(x[pilot], t_x[pilot], T[pilot])
            except TimingFitError:
                start = None  # a sample too small to identify it: start cold
        # warm start from a fit on nearly the same data (fewer iterations)
        init = dict(start.params_) if start is not None and start.params_ else None
        try:
            return MODELS[name](penalizer=self.penalizer, initial_params=init).fit(
                x[h], t_x[h], T[h]
            )
        except TimingFitError as exc:
            if "diverged" not in str(exc) or self.penalizer >= FALLBACK_PENALIZER:
                raise
        # A shop where hardly anyone visibly churns drives the dropout
        # parameters to infinity (the data do not identify them); a small L2
        # penalty keeps them finite, which is what "nearly no dropout" means.
        model = MODELS[name](penalizer=FALLBACK_PENALIZER).fit(x[h], t_x[h], T[h])
        model.penalized_ = True
        return model

    def _fit_candidates(
        self, summary: PurchaseSummary, rows: np.ndarray | None
    ) -> list[tuple[str, TimingModel | TimingFitError]]:
        """Every candidate fitted on ``rows`` of ``summary`` (or the error that
        stopped it), in the order of ``candidates``.

        The fits are independent and spend their time in numpy and scipy,
        which release the GIL, so they run side by side in threads.
        """

        def attempt(name: str) -> TimingModel | TimingFitError:
            try:
                return self._fit_one(name, summary, rows)
            except TimingFitError as exc:
                return exc

        if len(self.candidates) < 2:
            return [(name, attempt(name)) for name in self.candidates]
        with ThreadPoolExecutor(len(self.candidates), thread_name_prefix="encore-fit") as pool:
            return list(zip(self.candidates, pool.map(attempt, self.candidates), strict=True))

    def fit(
        self,
        customer_codes: np.ndarray,
        days: np.ndarray,
        as_of_day: float,
        n_customers: int | None = None,
    ) -> PurchaseTimingModel:
        """Fit (and, with a holdout, select) the timing model.

        Parameters
        ----------
        customer_codes : np.ndarray
            Integer customer code per purchase event.
        days : np.ndarray
            Purchase time in days (float); same-day purchases are merged.
        as_of_day : float
            End of the training data (inclusive); later events are ignored.
        n_customers : int, optional
            Number of customer codes (default ``max(code) + 1``).

        Returns
        -------
        self

        Raises
        ------
        TimingFitError
            When no candidate can be fitted (e.g. no customer bought twice),
            or the chosen one cannot be refitted on all the data.
        """
        self._check_config()
        codes = np.asarray(customer_codes)
        days = np.asarray(days, dtype=np.float64)
        summary = summarize_purchases(codes, days, as_of_day, n_customers)
        n = summary.n_customers
        selection: dict[str, Any] = {
            "metric": self.selection_metric,
            "holdout_days": self.holdout_days,
            "unit_days": self.unit_days,
            "candidates": {},
        }
        fit_rows = None
        with_history = np.flatnonzero(summary.has_history)
        if self.fit_sample is not None and with_history.size > self.fit_sample:
            fit_rows = seeded_subset(with_history, self.fit_sample, seed=1)
            selection["fit_sample"] = int(self.fit_sample)
        cal_models: dict[str, TimingModel] = {}
        self._calibration = None
        if self.holdout_days is not None:
            cal_end = float(as_of_day) - float(self.holdout_days)
            ph = float(self.probability_horizon_days or self.holdout_days)
            cal = summarize_purchases(codes, days, cal_end, n)
            mid = summarize_purchases(codes, days, min(cal_end + ph, float(as_of_day)), n)
            rows = np.flatnonzero(cal.has_history)
            # Choosing among candidates needs few customers: a seeded sample
            # keeps selection fast on millions.
            rows = seeded_subset(rows, self.selection_sample)
            if rows.size == 0:
                raise TimingFitError("no customer has a purchase before the holdout window")
            actual = (summary.x - cal.x)[rows].astype(np.float64)
            bought = (mid.x - cal.x)[rows] > 0
            x, t_x, T = (a[rows] for a in cal.in_units(self.unit_days))
            base = naive_baselines(cal, self.holdout_days, ph)
            base = {k: {kk: vv[rows] for kk, vv in v.items()} for k, v in base.items()}
            selection.update(
                calibration_end_day=cal_end,
                probability_horizon_days=ph,
                n_customers=int(rows.size),
            )
            scores: dict[str, float] = {}
            for name, m in self._fit_candidates(cal, rows):
                if isinstance(m, TimingFitError):
                    selection["candidates"][name] = {"error": str(m)}
                    continue
                cal_models[name] = m
                ev = evaluate_timing(
                    m.expected_purchases(self.holdout_days / self.unit_days, x, t_x, T),
                    actual,
                    m.p_purchase_within(ph / self.unit_days, x, t_x, T),
                    bought,
                )
                ev["params"] = dict(m.params_ or {})
                ev["log_likelihood"] = m.log_likelihood_
                selection["candidates"][name] = ev
                scores[name] = _SELECTION_METRICS[self.selection_metric](ev)
            selection["baselines"] = {
                k: v
                for k, v in evaluate_timing(
                    base["average_rate"]["counts"],
                    actual,
                    base["average_rate"]["p_purchase"],
                    bought,
                    base,
                )["baselines"].items()
            }
            order = sorted(scores, key=lambda k: scores[k])
            if order:
                best = scores[order[0]]
                tied = [
                    k
                    for k in self.candidates
                    if k in scores and scores[k] <= best + self.selection_tolerance * abs(best)
                ]
                order = tied + [k for k in order if k not in tied]
            selection["tolerance"] = self.selection_tolerance
        else:
            fitted: dict[str, TimingModel] = {}
            for name, m in self._fit_candidates(summary, fit_rows):
                if isinstance(m, TimingFitError):
                    selection["candidates"][name] = {"error": str(m)}
                    continue
                fitted[name] = m
                selection["candidates"][name] = {
                    "params": dict(fitted[name].params_ or {}),
                    "log_likelihood": fitted[name].log_likelihood_,
                }
            order = sorted(fitted, key=lambda k: -fitted[k].log_likelihood_)
        if not order:
            raise TimingFitError(f"no timing model could be fitted: {selection['candidates']}")

        errors = []
        for name in order:
            try:
                model = (
                    fitted[name]
                    if self.holdout_days is None
                    else self._fit_one(name, summary, fit_rows, start=cal_models.get(name))
                )
            except TimingFitError as exc:
                errors.append(f"{name}: {exc}")
                continue
            break
        else:
            raise TimingFitError("chosen timing model failed on all the data: " + "; ".join(errors))
        selection["chosen"] = name
        selection["penalized"] = bool(model.penalized_)
        selection["refit_errors"] = errors
        if self.holdout_days is not None and name in cal_models:
            self._calibration = (cal, cal_models[name])
        self.model_ = model
        self.summary_ = summary
        self.selection_ = _jsonable(selection)
        return self

    _calibration: tuple[PurchaseSummary, TimingModel] | None = None

    def calibration_model(self) -> PurchaseTimingModel | None:
        """The chosen model as fitted before the holdout window (None without one).

        It never saw the holdout, so judging it there is honest; reusing it
        saves refitting the chosen model for an evaluation on that window.
        """
        if self._calibration is None:
            return None
        cal, model = self._calibration
        out = PurchaseTimingModel(
            candidates=(model.name,),
            unit_days=self.unit_days,
            p_alive_floor=self.p_alive_floor,
        )
        out.model_ = model
        out.summary_ = cal
        out.selection_ = {"chosen": model.name, "calibration_of": self.selection_.get("chosen")}
        return out

    # -- predictions --------------------------------------------------------
    def _check_fitted(self) -> TimingModel:
        if self.model_ is None:
            raise NotFittedError("PurchaseTimingModel is not fitted; call fit() first")
        return self.model_

    @property
    def model_name_(self) -> str:
        """Name of the chosen model."""
        return self._check_fitted().name

    @property
    def as_of_day_(self) -> float:
        """The day the summary (and so every prediction) refers to."""
        self._check_fitted()
        return self.summary_.as_of_day

    def _rows(
        self, rows: np.ndarray | None, as_of_day: float | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        s = self.summary_
        if rows is None:
            idx = np.arange(s.n_customers)
        else:
            idx = np.asarray(rows, dtype=np.int64).ravel()
            if idx.size and (idx.min() < 0 or idx.max() >= s.n_customers):
                raise IndexError(f"customer rows must be in [0, {s.n_customers})")
        extra = 0.0
        if as_of_day is not None:
            extra = float(as_of_day) - s.as_of_day
            if not (extra >= 0 and math.isfinite(extra)):
                raise ValueError("as_of_day must not be before the model's as-of day")
        u = self.unit_days
        return idx, s.x[idx], s.t_x[idx] / u, (s.T[idx] + extra) / u, s.has_history[idx]

    def predict(
        self,
        horizon_days: float,
        rows: np.ndarray | None = None,
        *,
        as_of_day: float | None = None,
    ) -> dict[str, np.ndarray]:
        """Predictions for the next ``horizon_days`` for customer rows.

        Parameters
        ----------
        horizon_days : float
            Window length in days.
        rows : np.ndarray, optional
            Customer codes (default all).
        as_of_day : float, optional
            Predict from a later day than the fit, assuming no purchases in
            between (``T`` grows, ``x`` and ``t_x`` stay).

        Returns
        -------
        dict of np.ndarray
            ``p_active`` (P(still a customer)), ``expected_purchases`` in the
            window, ``p_purchase`` (at least one purchase in the window),
            ``median_days_to_next`` (median days to the next purchase given
            the customer is active; ``np.inf`` when ``p_active <
            p_alive_floor`` or when an active customer is more likely to leave
            than to buy again, or when the median is more than
            :data:`MAX_MEDIAN_DAYS` away) and ``has_history``. Customers without history
            get the predictions of a customer whose first purchase is on the
            as-of day (the population prior); mask them with ``has_history``.
        """
        m = self._check_fitted()
        h = float(horizon_days)
        if not (h >= 0 and math.isfinite(h)):
            raise ValueError("horizon_days must be finite and non-negative")
        _, x, t_x, T, has = self._rows(rows, as_of_day)
        t = h / self.unit_days
        return {
            "p_active": m.p_alive(x, t_x, T),
            "expected_purchases": m.expected_purchases(t, x, t_x, T),
            "p_purchase": m.p_purchase_within(t, x, t_x, T),
            "median_days_to_next": _cap_median(
                m.median_time_to_next(x, t_x, T, self.p_alive_floor) * self.unit_days
            ),
            "has_history": has.copy(),
        }

    def p_purchase_curve(
        self, rows: np.ndarray | None, horizons_days: Any, *, as_of_day: float | None = None
    ) -> np.ndarray:
        """P(at least one purchase within each horizon), shape ``(len(rows), len(horizons))``."""
        m = self._check_fitted()
        _, x, t_x, T, _ = self._rows(rows, as_of_day)
        hs = np.atleast_1d(np.asarray(horizons_days, dtype=np.float64)) / self.unit_days
        return m.p_purchase_curve(hs, x, t_x, T)

    # -- persistence --------------------------------------------------------
    def to_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """JSON-serialisable metadata and the summary arrays (no pickle).

        Returns
        -------
        tuple
            ``(meta, arrays)``; ``arrays`` can be saved with ``np.savez`` and
            loaded with ``allow_pickle=False``.
        """
        m = self._check_fitted()
        meta = {
            "schema": STATE_SCHEMA,
            "model": m.name,
            "params": dict(m.params_ or {}),
            "log_likelihood": m.log_likelihood_,
            "converged": bool(m.converged_),
            "n_customers_fit": int(m.n_customers_),
            "unit_days": float(self.unit_days),
            "as_of_day": float(self.summary_.as_of_day),
            "n_customers": int(self.summary_.n_customers),
            "p_alive_floor": float(self.p_alive_floor),
            "candidates": list(self.candidates),
            "holdout_days": self.holdout_days,
            "penalizer": float(self.penalizer),
            "selection_metric": self.selection_metric,
            "probability_horizon_days": self.probability_horizon_days,
            "selection": self.selection_,
        }
        arrays = {k: np.ascontiguousarray(v) for k, v in self.summary_.to_arrays().items()}
        return _jsonable(meta), arrays

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> PurchaseTimingModel:
        """Rebuild a fitted model from :meth:`to_state` output.

        Raises
        ------
        TimingStateError
            On an unknown schema or model, bad parameters, or arrays of the
            wrong shape or not finite.
        """
        if meta.get("schema") != STATE_SCHEMA:
            raise TimingStateError(f"unknown timing state schema {meta.get('schema')!r}")
        name = meta.get("model")
        if name not in MODELS:
            raise TimingStateError(f"unknown timing model {name!r}")
        try:
            obj = cls(
                candidates=tuple(meta["candidates"]),
                holdout_days=meta["holdout_days"],
                unit_days=float(meta["unit_days"]),
                p_alive_floor=float(meta["p_alive_floor"]),
                penalizer=float(meta["penalizer"]),
                selection_metric=meta["selection_metric"],
                probability_horizon_days=meta["probability_horizon_days"],
            )
            obj._check_config()
        except (KeyError, TypeError, ValueError) as exc:
            raise TimingStateError(f"malformed timing state: {exc}") from exc
        model = MODELS[name].from_params(meta.get("params", {}))
        ll = meta.get("log_likelihood")
        model.log_likelihood_ = float("nan") if ll is None else float(ll)
        model.converged_ = bool(meta.get("converged", True))
        model.n_customers_ = int(meta.get("n_customers_fit", 0))
        summary = PurchaseSummary.from_arrays(arrays, float(meta["as_of_day"]))
        if summary.n_customers != int(meta.get("n_customers", summary.n_customers)):
            raise TimingStateError("summary arrays do not match n_customers in the metadata")
        obj.model_ = model
        obj.summary_ = summary
        obj.selection_ = meta.get("selection") or {}
        return obj


def _jsonable(obj: Any) -> Any:
    """Plain Python types only; NaN and infinities become ``None``."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, bool | np.bool_):
        return bool(obj)
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        f = float(obj)
        return f if math.isfinite(f) else None
    return obj

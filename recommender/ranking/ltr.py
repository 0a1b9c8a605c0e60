"""Second stage: LambdaMART (LightGBM ``lambdarank``) over candidate features.

The ranker learns, per shop, how much a customer's own cycles, their recent
baskets, ALS and item-kNN, popularity and price say about what they buy in the
next window; a query group is one customer's candidates.

The model is stored as LightGBM's own text format (``model_to_string``) plus a
JSON document with the feature names, the parameters and a few probe rows with
their predictions: loading rebuilds the booster from the text (no pickle) and
refuses a model whose text does not match its recorded sha256 or that does
not reproduce the probes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from recommender.errors import NotFittedError

__all__ = ["LTRRanker", "RankerStateError"]

RANKER_SCHEMA = "encore.ltr/1"
MODEL_FILE = "ranker.txt"
#: Predictions on fewer rows run on one thread (see :meth:`LTRRanker.predict`).
SMALL_PREDICT = 5_000
META_FILE = "ranker.json"


class RankerStateError(ValueError):
    """A saved ranker is malformed, corrupted or from an unknown schema."""


class LTRRanker:
    """LambdaMART ranker over named feature columns.

    Parameters
    ----------
    features
        Column names, in the order of every feature matrix given to the ranker.
    n_estimators
        Most boosting rounds; early stopping on the validation customers picks
        the number actually kept. The cap bounds serving: prediction time
        grows with the trees, and one customer's few hundred rows must be
        scored within a request's budget; early stopping usually keeps fewer.
    learning_rate, num_leaves, min_data_in_leaf, feature_fraction, lambda_l2
        LightGBM's tree parameters.
    early_stopping_rounds
        Rounds without a better validation nDCG@10 before training stops.
    num_threads
        LightGBM threads. One by default: LightGBM's OpenMP threads wait for
        each other at every histogram step, so on a 2-core machine where
        another job holds a core, two threads train several times slower than
        one, while one thread is at worst about twice off the best case.
    seed
        Seed of every random choice (``deterministic=True`` as well).
    """

    def __init__(
        self,
        features: tuple[str, ...] | list[str],
        *,
        n_estimators: int = 150,
        learning_rate: float = 0.05,
        num_leaves: int = 31,
        min_data_in_leaf: int = 100,
        feature_fraction: float = 0.9,
        lambda_l2: float = 1.0,
        early_stopping_rounds: int = 30,
        num_threads: int = 1,
        seed: int = 0,
    ) -> None:
        self.features = tuple(features)
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_data_in_leaf = min_data_in_leaf
        self.feature_fraction = feature_fraction
        self.lambda_l2 = lambda_l2
        self.early_stopping_rounds = early_stopping_rounds
        self.num_threads = num_threads
        self.seed = seed
        self.booster_: Any = None
        self.best_iteration_: int | None = None
        self.valid_ndcg_: float | None = None

    def params(self) -> dict[str, Any]:
        """LightGBM parameters (what is saved with the model)."""
        return {
            "objective": "lambdarank",
            "metric": "ndcg",
            "eval_at": [10],
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_data_in_leaf": self.min_data_in_leaf,
            "feature_fraction": self.feature_fraction,
            "bagging_seed": self.seed,
            "feature_fraction_seed": self.seed,
            "lambda_l2": self.lambda_l2,
            "num_threads": self.num_threads,
            "seed": self.seed,
            "deterministic": True,
            "force_row_wise": True,
            "verbosity": -1,
        }

    def fit(
        self,
        features: np.ndarray,
        labels: np.ndarray,
        groups: np.ndarray,
        *,
        valid: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    ) -> LTRRanker:
        """Train on rows grouped by customer.

        Parameters
        ----------
        features
            ``(rows, len(self.features))`` float matrix.
        labels
            Non-negative integer relevance per row (graded: larger is better).
        groups
            Rows per customer, in row order (they sum to ``rows``).
        valid
            ``(features, labels, groups)`` of held-out customers: training
            stops when their nDCG@10 stops improving.

        Raises
        ------
        ValueError
            On shapes that disagree or a matrix with no relevant row.
        """
        import lightgbm as lgb

        x = self._check_matrix(features)
        y = np.asarray(labels)
        g = np.asarray(groups, dtype=np.int64)
        if y.shape != (x.shape[0],) or int(g.sum()) != x.shape[0]:
            raise ValueError("labels need one entry per row and groups must sum to the rows")
        if not (y > 0).any():
            raise ValueError("no relevant row: the label window holds no candidate purchase")
        train = lgb.Dataset(x, y, group=g, feature_name=list(self.features), free_raw_data=True)
        sets: list[Any] = []
        names: list[str] = []
        callbacks: list[Any] = []
        if valid is not None:
            vx, vy, vg = valid
            sets = [lgb.Dataset(self._check_matrix(vx), np.asarray(vy), group=vg, reference=train)]
            names = ["valid"]
            callbacks = [lgb.early_stopping(self.early_stopping_rounds, verbose=False)]
        booster = lgb.train(
            self.params(),
            train,
            num_boost_round=self.n_estimators,
            valid_sets=sets,
            valid_names=names,
            callbacks=callbacks,
        )
        best = int(booster.best_iteration or booster.current_iteration())
        self.booster_ = booster
        self.best_iteration_ = best
        if valid is not None:
            score = booster.best_score.get("valid", {}).get("ndcg@10")
            self.valid_ndcg_ = None if score is None else float(score)
        return self

    def _check_matrix(self, features: np.ndarray) -> np.ndarray:
        x = np.asarray(features, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != len(self.features):
            raise ValueError(
                f"expected a (rows, {len(self.features)}) feature matrix, got {x.shape}"
            )
        return x

    def _check_fitted(self) -> None:
        if self.booster_ is None:
            raise NotFittedError("LTRRanker is not fitted; call fit() or load() first")

    def predict(self, features: np.ndarray, *, num_threads: int | None = None) -> np.ndarray:
        """Scores of feature rows (higher ranks first), float64.

        ``num_threads`` defaults to the training threads, except below
        :data:`SMALL_PREDICT` rows (one customer's candidates), which take
        one thread: waking a pool of OpenMP threads costs more than the trees,
        and many times more when the cores are busy.
        """
        self._check_fitted()
        x = self._check_matrix(features)
        if num_threads is None:
            num_threads = 1 if x.shape[0] < SMALL_PREDICT else self.num_threads
        kw: dict[str, Any] = {"num_iteration": self.best_iteration_, "num_threads": num_threads}
        return np.asarray(self.booster_.predict(x, **kw), dtype=np.float64)

    def feature_importance(self, kind: str = "gain") -> dict[str, float]:
        """Total ``gain`` (or ``split`` count) per feature, largest first."""
        self._check_fitted()
        values = self.booster_.feature_importance(
            importance_type=kind, iteration=self.best_iteration_
        )
        pairs = sorted(zip(self.features, values, strict=True), key=lambda p: -p[1])
        return {name: float(v) for name, v in pairs}

    # -- storage -------------------------------------------------------------
    def to_text(self, probe: np.ndarray | None = None) -> tuple[str, dict[str, Any]]:
        """The LightGBM model text and the JSON metadata (feature names,
        parameters, probe rows and their predictions)."""
        self._check_fitted()
        meta: dict[str, Any] = {
            "schema": RANKER_SCHEMA,
            "features": list(self.features),
            "params": self.params(),
            "hyperparameters": {
                "n_estimators": self.n_estimators,
                "early_stopping_rounds": self.early_stopping_rounds,
            },
            "best_iteration": self.best_iteration_,
            "valid_ndcg@10": self.valid_ndcg_,
        }
        if probe is not None and len(probe):
            x = self._check_matrix(probe)
            meta["probe"] = {
                # NaN is not JSON: missing values travel as null
                "rows": [[None if np.isnan(v) else float(v) for v in row] for row in x],
                "predictions": [float(v) for v in self.predict(x)],
            }
        text = self.booster_.model_to_string(num_iteration=self.best_iteration_)
        meta["model_sha256"] = _sha256(text)
        return text, meta

    @classmethod
    def from_text(cls, text: str, meta: dict[str, Any]) -> LTRRanker:
        """The ranker :meth:`to_text` gave.

        Raises
        ------
        RankerStateError
            On an unknown schema, a model string LightGBM cannot parse, feature
            names that differ from the metadata, or probe rows the loaded model
            does not reproduce.
        """
        import lightgbm as lgb

        if meta.get("schema") != RANKER_SCHEMA:
            raise RankerStateError(
                f"unknown ranker schema {meta.get('schema')!r}; expected {RANKER_SCHEMA}"
            )
        features = [str(f) for f in meta.get("features", [])]
        # LightGBM's parser aborts the whole process on some damaged strings
        # instead of raising: nothing reaches it that is not the saved text
        if meta.get("model_sha256") != _sha256(text):
            raise RankerStateError(
                "the ranker model text is corrupted: its sha256 differs from the metadata"
            )
        try:
            booster = lgb.Booster(model_str=text)
        except Exception as exc:  # LightGBM raises its own error type on a bad string
            raise RankerStateError(f"the ranker model text is corrupted: {exc}") from exc
        if booster.feature_name() != features:
            raise RankerStateError(
                "the ranker model's features differ from its metadata: "
                f"{booster.feature_name()} != {features}"
            )
        hyper = meta.get("hyperparameters", {})
        params = meta.get("params", {})
        ranker = cls(
            features,
            n_estimators=int(hyper.get("n_estimators", 150)),
            learning_rate=float(params.get("learning_rate", 0.05)),
            num_leaves=int(params.get("num_leaves", 31)),
            min_data_in_leaf=int(params.get("min_data_in_leaf", 100)),
            feature_fraction=float(params.get("feature_fraction", 0.9)),
            lambda_l2=float(params.get("lambda_l2", 1.0)),
            early_stopping_rounds=int(hyper.get("early_stopping_rounds", 30)),
            num_threads=int(params.get("num_threads", 1)),
            seed=int(params.get("seed", 0)),
        )
        ranker.booster_ = booster
        # the text holds only the kept trees
        ranker.best_iteration_ = None
        ranker.valid_ndcg_ = meta.get("valid_ndcg@10")
        probe = meta.get("probe")
        if probe:
            rows = np.array(
                [[np.nan if v is None else v for v in row] for row in probe["rows"]],
                dtype=np.float32,
            )
            got = ranker.predict(rows)
            want = np.asarray(probe["predictions"], dtype=np.float64)
            if got.shape != want.shape or not np.allclose(got, want, rtol=1e-6, atol=1e-9):
                raise RankerStateError("the loaded ranker does not reproduce its probe predictions")
        ranker.best_iteration_ = booster.current_iteration()
        return ranker

    def save(self, directory: str | Path, probe: np.ndarray | None = None) -> dict[str, Path]:
        """Write ``ranker.txt`` and ``ranker.json`` into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        text, meta = self.to_text(probe)
        paths = {"model": directory / MODEL_FILE, "meta": directory / META_FILE}
        paths["model"].write_text(text, encoding="utf-8")
        paths["meta"].write_text(json.dumps(meta, indent=2), encoding="utf-8")
        return paths

    @classmethod
    def load(cls, directory: str | Path) -> LTRRanker:
        """The ranker :meth:`save` wrote (see :meth:`from_text` for the checks)."""
        directory = Path(directory)
        try:
            text = (directory / MODEL_FILE).read_text(encoding="utf-8")
            meta = json.loads((directory / META_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise RankerStateError(f"cannot read the ranker in {directory}: {exc}") from exc
        return cls.from_text(text, meta)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()

"""The model bundle: everything the serving app needs, and nothing it must rebuild.

This is the only contract between ``training`` (which writes a bundle with
:func:`save_bundle`) and ``serving`` (which reads it with :func:`load_bundle`).

Files in a version directory (schema version 1):

==================  =========================================================
``customers.npy``   customer ids (text); row ``i`` is customer ``i`` everywhere
``items.npy``       item ids (text); column ``j`` is item ``j`` everywhere
``history.npz``     CSR customer x item purchase-line counts (indptr, indices, data)
``popularity.npy``  item popularity (customers who bought it lately), float32
``catalog.npz``     title, category (text), price (float, NaN unknown), available
``als.npz``         user_factors, item_factors (float32), when ranking was trained
``topn.npz``        precomputed top-N item rows and scores per customer (optional)
``timing.json/npz`` next-purchase-time model state (optional)
``repurchase.json/npz`` buy-it-again model state (optional)
``spend.json/npz``  spend-per-order model state, and each customer's repeat
                    orders (``frequency``) and their mean value (``monetary``),
                    aligned with the customer index (optional: logs with prices)
``health.json``     the shop's monthly measures and cohort retention (optional)
``ranker.txt/json``  the two-stage ranker: LightGBM's text model and its feature
                    list, parameters and probe predictions (optional)
``two_stage.json``  the ranker's stage settings; with ``snapshot.npz`` (what the
                    shop knew per customer, item and pair at the end of the log)
                    and ``item_knn.npz`` (item-kNN similarity, CSR)
``*.png``           reports for people (the timing model's calibration plot)
==================  =========================================================
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from recommender.data.ids import IdIndex
from recommender.ranking.als import ALSRecommender, FactorError
from recommender.ranking.ltr import LTRRanker, RankerStateError
from recommender.ranking.two_stage import StageModels, stage_from_state, stage_state
from recommender.store.artifacts import (
    CorruptArtifactError,
    VersionReader,
    VersionWriter,
    resolve_version_dir,
)

if TYPE_CHECKING:  # load_bundle imports them only for a version that has them
    from recommender.timing.repurchase import RepurchaseModel
    from recommender.timing.selection import PurchaseTimingModel
    from recommender.value.spend import GammaGammaModel


@dataclass
class CustomerSpend:
    """The spend model and what it reads of each customer, aligned with the
    customer index.

    Attributes
    ----------
    model
        The fitted Gamma-Gamma model.
    frequency
        Repeat orders of positive value per customer row.
    monetary
        Mean value of those orders (0 where there are none).
    """

    model: GammaGammaModel
    frequency: np.ndarray
    monetary: np.ndarray

    def expected_order_value(self, rows: np.ndarray) -> np.ndarray:
        """Each of ``rows``' expected value of a future order."""
        return self.model.expected_order_value(self.frequency[rows], self.monetary[rows])


@dataclass
class Catalog:
    """Item attributes aligned with the item index."""

    title: np.ndarray
    category: np.ndarray
    price: np.ndarray
    available: np.ndarray

    @classmethod
    def empty(cls, n_items: int) -> Catalog:
        return cls(
            title=np.full(n_items, "", dtype=str),
            category=np.full(n_items, "", dtype=str),
            price=np.full(n_items, np.nan),
            available=np.ones(n_items, dtype=bool),
        )

    @classmethod
    def from_frame(cls, frame: Any, items: IdIndex) -> Catalog:
        """Align a catalog frame (``item_id``, title, category, price, available) to ``items``."""
        cat = cls.empty(len(items))
        if frame is None or len(frame) == 0:
            return cat
        rows = items.rows(frame["item_id"].to_numpy())
        ok = rows >= 0
        r = rows[ok]
        title = cat.title.astype(object)
        category = cat.category.astype(object)
        title[r] = frame["title"].to_numpy()[ok]
        category[r] = frame["category"].to_numpy()[ok]
        cat.title = np.asarray(title, dtype=str)
        cat.category = np.asarray(category, dtype=str)
        cat.price[r] = frame["price"].to_numpy(dtype=np.float64)[ok]
        cat.available[r] = frame["available"].to_numpy(dtype=bool)[ok]
        return cat

    @property
    def has_categories(self) -> bool:
        return bool((self.category != "").any())

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {
            "title": np.asarray(self.title, dtype=str),
            "category": np.asarray(self.category, dtype=str),
            "price": np.asarray(self.price, dtype=np.float64),
            "available": np.asarray(self.available, dtype=bool),
        }


@dataclass
class Bundle:
    """A loaded, verified model version."""

    version: str
    path: Path
    manifest: dict[str, Any]
    customers: IdIndex
    items: IdIndex
    history: sp.csr_matrix
    popularity: np.ndarray
    catalog: Catalog
    als: ALSRecommender | None = None
    topn_items: np.ndarray | None = None
    topn_scores: np.ndarray | None = None
    timing: PurchaseTimingModel | None = None
    repurchase: RepurchaseModel | None = None
    spend: CustomerSpend | None = None
    health: dict[str, Any] | None = None
    """The shop's health (:meth:`recommender.value.health.ShopHealth.to_dict`)."""
    ranker: LTRRanker | None = None
    """The two-stage ranker (with ``stage``), when the version has one."""
    stage: StageModels | None = None
    """Candidates and features as of the end of the log, for ``ranker``."""

    @property
    def served(self) -> str:
        """The list a known customer is shown: ``"ranker"``, ``"als"`` or the
        name of the baseline whose top-N table is served (see the manifest's
        ``serving``). Versions from before the ranker serve ALS."""
        name = (self.manifest.get("serving") or {}).get("list")
        if name == "ranker" and self.ranker is None:
            return "als"
        return str(name) if name else "als"

    @property
    def explore(self) -> str:
        """The list of an explore-only question (every purchase hidden):
        ``"ranker"`` when it beat ALS on the evaluation window, else ``"als"``."""
        name = (self.manifest.get("serving") or {}).get("explore")
        return "ranker" if name == "ranker" and self.ranker is not None else "als"

    @property
    def n_customers(self) -> int:
        return len(self.customers)

    @property
    def n_items(self) -> int:
        return len(self.items)


def save_bundle(
    models_dir: str | Path,
    *,
    customers: IdIndex,
    items: IdIndex,
    history: sp.csr_matrix,
    popularity: np.ndarray,
    catalog: Catalog,
    manifest: dict[str, Any],
    als: ALSRecommender | None = None,
    topn: tuple[np.ndarray, np.ndarray] | None = None,
    timing: PurchaseTimingModel | None = None,
    repurchase: RepurchaseModel | None = None,
    spend: CustomerSpend | None = None,
    health: dict[str, Any] | None = None,
    ranker: tuple[LTRRanker, StageModels, np.ndarray | None] | None = None,
    version: str | None = None,
    reports: Mapping[str, bytes | Callable[[], bytes | None]] | None = None,
) -> Path:
    """Write a complete version atomically and return its directory.

    ``reports`` are files for people, each given as its bytes or as a function
    that returns them (or None to leave it out); functions are called after
    the arrays are written, so a report can be drawn beside the writing.

    The version is not published; call :func:`recommender.artifacts.publish`
    after :func:`load_bundle` has read it back.
    """
    n_c, n_i = len(customers), len(items)
    if history.shape != (n_c, n_i):
        raise ValueError(f"history shape {history.shape} != ({n_c}, {n_i})")
    if popularity.shape != (n_i,):
        raise ValueError("popularity must have one entry per item")
    components = {
        "als": als is not None,
        "topn": topn is not None,
        "timing": timing is not None,
        "repurchase": repurchase is not None,
        "spend": spend is not None,
        "health": health is not None,
        "ranker": ranker is not None,
    }
    if spend is not None and (spend.frequency.shape != (n_c,) or spend.monetary.shape != (n_c,)):
        raise ValueError("spend arrays must have one entry per customer")
    with VersionWriter(models_dir, version) as w:
        w.write_array("customers.npy", customers.ids_)
        w.write_array("items.npy", items.ids_)
        h = sp.csr_matrix(history, dtype=np.float32)
        h.sort_indices()
        w.write_arrays(
            "history.npz",
            {
                "indptr": h.indptr.astype(np.int64),
                "indices": h.indices.astype(np.int32),
                "data": h.data.astype(np.float32),
            },
        )
        w.write_array("popularity.npy", np.asarray(popularity, dtype=np.float32))
        w.write_arrays("catalog.npz", catalog.to_arrays())
        if als is not None:
            assert als.user_factors_ is not None and als.item_factors_ is not None
            if als.user_factors_.shape[0] != n_c or als.item_factors_.shape[0] != n_i:
                raise ValueError("ALS factors do not match the id indexes")
            w.write_arrays(
                "als.npz", {"user_factors": als.user_factors_, "item_factors": als.item_factors_}
            )
        if topn is not None:
            w.write_arrays(
                "topn.npz",
                {"items": np.asarray(topn[0], np.int32), "scores": np.asarray(topn[1], np.float32)},
            )
        if timing is not None:
            meta, arrays = timing.to_state()
            w.write_json("timing.json", meta)
            w.write_arrays("timing.npz", arrays)
        if repurchase is not None:
            meta, arrays = repurchase.to_state()
            w.write_json("repurchase.json", meta)
            w.write_arrays("repurchase.npz", arrays)
        if spend is not None:
            w.write_json("spend.json", spend.model.to_state())
            w.write_arrays(
                "spend.npz",
                {
                    "frequency": np.asarray(spend.frequency, dtype=np.float64),
                    "monetary": np.asarray(spend.monetary, dtype=np.float64),
                },
            )
        if health is not None:
            w.write_json("health.json", health)
        if ranker is not None:
            model, stage, probe = ranker
            if stage.snapshot.n_customers != n_c or stage.snapshot.n_items != n_i:
                raise ValueError("the ranker's snapshot does not match the id indexes")
            text, meta = model.to_text(probe)
            w.write_bytes("ranker.txt", text.encode("utf-8"))
            w.write_json("ranker.json", meta)
            stage_meta, snapshot, knn = stage_state(stage)
            w.write_json("two_stage.json", stage_meta)
            w.write_arrays("snapshot.npz", snapshot)
            if knn:
                w.write_arrays("item_knn.npz", knn)
        for name, report in (reports or {}).items():
            data = report() if callable(report) else report
            if data is not None:
                w.write_bytes(name, data)
        full = dict(manifest)
        full["components"] = components
        full["shape"] = {"customers": n_c, "items": n_i}
        if als is not None:
            full.setdefault("als", {}).update(
                {
                    "regularization": float(als.regularization),
                    "alpha": float(als.alpha),
                    "factors": int(als.factors),
                }
            )
        return w.commit(full)


def load_bundle(
    models_dir: str | Path, version: str | None = None, *, verify_hashes: bool = True
) -> Bundle:
    """Load and verify a version (default: the published one).

    Raises
    ------
    NoModelError
        Nothing is published.
    IncompatibleArtifactError
        Unknown format or schema version.
    CorruptArtifactError
        Missing or changed files, wrong shapes, non-finite numbers.
    """
    path = resolve_version_dir(models_dir, version)
    return load_bundle_dir(path, verify_hashes=verify_hashes)


def load_bundle_dir(path: str | Path, *, verify_hashes: bool = True) -> Bundle:
    """Load and verify the version stored in directory ``path``."""
    r = VersionReader(path, verify_hashes=verify_hashes)
    m = r.manifest
    customers = IdIndex(r.array("customers.npy"))
    items = IdIndex(r.array("items.npy"))
    n_c, n_i = len(customers), len(items)
    if m.get("shape") != {"customers": n_c, "items": n_i}:
        raise CorruptArtifactError(f"{path}: id indexes do not match the manifest's shape")
    h = r.arrays("history.npz", finite=True)
    try:
        history = sp.csr_matrix((h["data"], h["indices"], h["indptr"]), shape=(n_c, n_i))
        history.check_format(full_check=True)
    except (ValueError, KeyError) as exc:
        raise CorruptArtifactError(f"{path}: history matrix is malformed ({exc})") from None
    popularity = r.array("popularity.npy", finite=True)
    if popularity.shape != (n_i,):
        raise CorruptArtifactError(f"{path}: popularity has the wrong length")
    c = r.arrays("catalog.npz")
    catalog = Catalog(
        title=c["title"], category=c["category"], price=c["price"], available=c["available"]
    )
    if any(len(v) != n_i for v in (catalog.title, catalog.category, catalog.price)):
        raise CorruptArtifactError(f"{path}: catalog is not aligned with the items")
    bundle = Bundle(
        version=str(m["version"]),
        path=Path(path),
        manifest=m,
        customers=customers,
        items=items,
        history=history,
        popularity=popularity,
        catalog=catalog,
    )
    comps = m.get("components", {})
    if comps.get("als"):
        f = r.arrays("als.npz", finite=True)
        uf, itf = f["user_factors"], f["item_factors"]
        if uf.shape[0] != n_c or itf.shape[0] != n_i or uf.shape[1] != itf.shape[1]:
            raise CorruptArtifactError(f"{path}: ALS factors do not match the id indexes")
        params = m.get("als", {})
        try:
            bundle.als = ALSRecommender.from_factors(
                uf,
                itf,
                regularization=float(params["regularization"]),
                alpha=float(params["alpha"]),
            )
        except (KeyError, FactorError) as exc:
            raise CorruptArtifactError(f"{path}: ALS model unusable ({exc})") from None
    if comps.get("topn"):
        t = r.arrays("topn.npz", finite=False)
        if t["items"].shape[0] != n_c or t["items"].shape != t["scores"].shape:
            raise CorruptArtifactError(f"{path}: precomputed top-N has the wrong shape")
        if t["items"].size and (t["items"].max() >= n_i or t["items"].min() < -1):
            raise CorruptArtifactError(f"{path}: precomputed top-N names unknown items")
        bundle.topn_items, bundle.topn_scores = t["items"], t["scores"]
    if comps.get("timing"):
        from recommender.timing.selection import PurchaseTimingModel

        try:
            bundle.timing = PurchaseTimingModel.from_state(
                r.json("timing.json"), r.arrays("timing.npz", finite=True)
            )
        except CorruptArtifactError:
            raise
        except Exception as exc:  # any failure to rebuild means the file is unusable
            raise CorruptArtifactError(f"{path}: timing model unusable ({exc})") from None
    if comps.get("repurchase"):
        from recommender.timing.repurchase import RepurchaseModel

        try:
            bundle.repurchase = RepurchaseModel.from_state(
                r.json("repurchase.json"), r.arrays("repurchase.npz", finite=True)
            )
        except CorruptArtifactError:
            raise
        except Exception as exc:
            raise CorruptArtifactError(f"{path}: repurchase model unusable ({exc})") from None
    if comps.get("spend"):
        bundle.spend = _load_spend(r, path, n_c)
    if comps.get("ranker"):
        bundle.ranker, bundle.stage = _load_ranker(r, path, bundle)
    if comps.get("health"):
        health = r.json("health.json")
        if not isinstance(health, dict) or not {"months", "cohorts"} <= set(health):
            raise CorruptArtifactError(f"{path}: health.json is not a shop health table")
        bundle.health = health
    return bundle


def _load_spend(r: VersionReader, path: str | Path, n_c: int) -> CustomerSpend:
    """The spend model and its per-customer arrays, checked for shape and finiteness."""
    from recommender.value.spend import GammaGammaModel

    arrays = r.arrays("spend.npz", finite=True)
    try:
        model = GammaGammaModel.from_state(r.json("spend.json"))
        frequency, monetary = arrays["frequency"], arrays["monetary"]
    except (KeyError, ValueError, TypeError) as exc:
        raise CorruptArtifactError(f"{path}: spend model unusable ({exc})") from None
    if frequency.shape != (n_c,) or monetary.shape != (n_c,):
        raise CorruptArtifactError(f"{path}: spend arrays do not match the customer index")
    return CustomerSpend(model, frequency, monetary)


def _load_ranker(
    r: VersionReader, path: str | Path, bundle: Bundle
) -> tuple[LTRRanker, StageModels]:
    """The two-stage ranker and its stage, checked (model text against its
    sha256 and probe predictions; snapshot against the id indexes)."""
    try:
        text = r.text("ranker.txt")
        ranker = LTRRanker.from_text(text, r.json("ranker.json"))
        knn = r.arrays("item_knn.npz") if r.has("item_knn.npz") else None
        stage = stage_from_state(
            r.json("two_stage.json"),
            r.arrays("snapshot.npz"),
            knn,
            als=bundle.als,
            repurchase=bundle.repurchase,
        )
    except CorruptArtifactError:
        raise
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, RankerStateError) as exc:
        raise CorruptArtifactError(f"{path}: two-stage ranker unusable ({exc})") from None
    snap = stage.snapshot
    if snap.n_customers != bundle.n_customers or snap.n_items != bundle.n_items:
        raise CorruptArtifactError(f"{path}: the ranker's snapshot does not match the id indexes")
    return ranker, stage

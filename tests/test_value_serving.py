"""Customer value and the shop's health on every surface, and where a version lacks them.

A shop whose log has no prices trains and serves with the value columns
empty and a note saying why (the CLI's columns present but empty, the API's
fields null with ``value_note``, ``/v1/shop/metrics`` with the counts and
``has_values: false``). A version written without the spend and health files
(as versions before them were) still loads and answers every question it
could answer before.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from recommender.answers import AnswerError, due_table, shop_metrics
from recommender.data.synthetic import generate_shop, write_shop
from recommender.store.artifacts import publish
from recommender.store.bundle import Bundle, load_bundle, save_bundle
from serving.app import create_app
from tests.test_serving import N_CUSTOMERS, N_ITEMS, TrainedShop, settings, train_small_shop
from training.cli import EXIT_OK, EXIT_USAGE, main

pytestmark = pytest.mark.usefixtures("thread_limits_restored")
VALUE = ("expected_order_value", "expected_spend", "clv")


@pytest.fixture(scope="module")
def priced(tmp_path_factory) -> TrainedShop:
    return train_small_shop(tmp_path_factory.mktemp("priced"))


@pytest.fixture(scope="module")
def unpriced(tmp_path_factory) -> Path:
    """The small shop trained from a log without a price column."""
    from training.config import ALSConfig, TrainConfig
    from training.pipeline import train

    directory = tmp_path_factory.mktemp("unpriced")
    shop = generate_shop("demo", n_customers=N_CUSTOMERS, n_items=N_ITEMS, seed=0)
    paths = write_shop(shop, directory / "shop")
    tx = pd.read_csv(paths["transactions"])
    assert "price" in tx.columns
    tx.drop(columns=["price"]).to_csv(paths["transactions"], index=False)
    cfg = TrainConfig(
        top_n=20, als=ALSConfig(factors=8, iterations=5), max_eval_customers=N_CUSTOMERS,
        run_baselines=False,
    )  # fmt: skip
    train(paths["transactions"], items_path=paths["items"], models_dir=directory / "models",
          config=cfg, say=lambda m: None)  # fmt: skip
    return directory / "models"


def _busy(bundle: Bundle, n: int = 5) -> list[str]:
    counts = np.diff(bundle.history.indptr)
    return [bundle.customers.id(int(r)) for r in np.argsort(-counts, kind="stable")[:n]]


def test_a_log_without_prices_trains_and_serves_with_empty_value_columns(
    unpriced, tmp_path, capsys
):
    bundle = load_bundle(unpriced)
    assert bundle.spend is None and bundle.timing is not None
    assert bundle.manifest["metrics"]["spend"] == {"skipped": "the log has no prices"}
    assert bundle.manifest["components"]["health"]
    out = tmp_path / "np.csv"
    assert main(["next-purchase", "--models-dir", str(unpriced), "--out", str(out)]) == EXIT_OK
    assert "no spend figures: the log has no prices" in capsys.readouterr().out
    table = pd.read_csv(out, dtype={"customer_id": str})
    assert list(table.columns[-3:]) == list(VALUE)
    assert len(table) == N_CUSTOMERS and table[list(VALUE)].isna().all().all()
    assert table["p_purchase"].notna().all()
    with TestClient(create_app(settings(unpriced))) as client:
        for cid in _busy(bundle):
            n = client.get(f"/v1/customers/{cid}/next-purchase").json()
            assert all(n[c] is None for c in VALUE)
            assert n["value_note"] == "no spend figures: the log has no prices"
            assert 0 <= n["p_purchase"] <= 1
        due = client.get("/v1/customers/due", params={"min_probability": 0, "format": "json"})
        rows = due.json()["customers"]
        assert rows and all(r[c] is None for r in rows for c in VALUE)
        r = client.get("/v1/customers/due", params={"sort": "expected_spend"})
        assert r.status_code == 409 and "no prices" in r.json()["detail"]
        m = client.get("/v1/shop/metrics").json()
        assert m["has_values"] is False and m["model_version"] == bundle.version
        assert any("price" in note for note in m["notes"])
        assert sum(c["size"] for c in m["cohorts"]) == N_CUSTOMERS
        assert all(mo["active_customers"] > 0 and mo["revenue"] is None for mo in m["months"])
    rc = main(["due", "--models-dir", str(unpriced), "--sort", "expected_spend",
               "--out", str(tmp_path / "due.csv")])  # fmt: skip
    assert rc == EXIT_USAGE and "no prices" in capsys.readouterr().err


def test_shop_metrics_of_a_priced_shop(priced):
    bundle = load_bundle(priced.models)
    with TestClient(create_app(settings(priced.models))) as client:
        m = client.get("/v1/shop/metrics").json()
    assert m == json.loads(json.dumps(shop_metrics(bundle)))
    assert m["has_values"] is True and m["notes"] == []
    tx = priced.shop.transactions
    value = (tx["quantity"] * tx["price"]).sum() if "quantity" in tx else tx["price"].sum()
    assert sum(mo["revenue"] for mo in m["months"]) == pytest.approx(value)
    for mo in m["months"]:
        assert mo["active_customers"] == mo["new_customers"] + mo["returning_customers"]
        assert 0 <= mo["repurchase_rate"] <= 1 and 0 <= mo["returning_revenue_share"] <= 1
        assert mo["average_order_value"] == pytest.approx(mo["revenue"] / mo["orders"])


def _older_version(bundle: Bundle, models: Path) -> Path:
    """``bundle`` written as a version from before spend and health files."""
    manifest = {
        k: v for k, v in bundle.manifest.items()
        if k not in ("files", "components", "shape", "version")
    }  # fmt: skip
    manifest["metrics"] = {k: v for k, v in manifest["metrics"].items() if k != "spend"}
    topn = None
    if bundle.topn_items is not None and bundle.topn_scores is not None:
        topn = (bundle.topn_items, bundle.topn_scores)
    path = save_bundle(
        models, customers=bundle.customers, items=bundle.items, history=bundle.history,
        popularity=bundle.popularity, catalog=bundle.catalog, manifest=manifest,
        als=bundle.als, topn=topn, timing=bundle.timing, repurchase=bundle.repurchase,
    )  # fmt: skip
    publish(models, path.name)
    return path


def test_a_version_without_spend_and_health_files_still_loads_and_serves(priced, tmp_path):
    bundle = load_bundle(priced.models)
    assert bundle.spend is not None and bundle.health is not None
    models = tmp_path / "models"
    path = _older_version(bundle, models)
    assert not (path / "spend.npz").exists() and not (path / "health.json").exists()
    old = load_bundle(models)
    assert old.spend is None and old.health is None and old.timing is not None
    with pytest.raises(AnswerError) as err:
        shop_metrics(old)
    assert err.value.kind == "unavailable"
    table = due_table(old, 30.0, 0.0, 1000)
    assert table[list(VALUE)].isna().all().all() and len(table)
    with TestClient(create_app(settings(models))) as client:
        cid = _busy(old, 1)[0]
        n = client.get(f"/v1/customers/{cid}/next-purchase").json()
        assert all(n[c] is None for c in VALUE) and "no spend model" in n["value_note"]
        r = client.get(f"/v1/customers/{cid}/recommendations", params={"k": 5})
        assert r.status_code == 200 and len(r.json()["items"]) == 5
        r = client.get("/v1/shop/metrics")
        assert r.status_code == 409 and "no shop metrics" in r.json()["detail"]
        csv = client.get("/v1/customers/due", params={"min_probability": 0}).text
        due = pd.read_csv(io.StringIO(csv))
        assert list(due.columns[-3:]) == list(VALUE) and due[list(VALUE)].isna().all().all()


def test_spend_files_are_checked_on_load(priced, tmp_path):
    from recommender.store.artifacts import CorruptArtifactError

    bundle = load_bundle(priced.models)
    assert bundle.spend is not None
    assert bundle.spend.frequency.shape == (bundle.n_customers,)
    assert np.isfinite(bundle.spend.monetary).all()
    models = tmp_path / "models"
    path = _older_version(bundle, models)  # a copy to damage
    spend = bundle.spend
    bad = save_bundle(
        models, customers=bundle.customers, items=bundle.items, history=bundle.history,
        popularity=bundle.popularity, catalog=bundle.catalog,
        manifest={"as_of": bundle.manifest["as_of"]}, spend=spend,
    )  # fmt: skip
    assert load_bundle(models, bad.name).spend is not None
    np.savez(bad / "spend.npz", frequency=spend.frequency, monetary=spend.monetary * np.nan)
    with pytest.raises(CorruptArtifactError):  # the hash
        load_bundle(models, bad.name)
    with pytest.raises(CorruptArtifactError, match="NaN"):  # and, unhashed, the numbers
        load_bundle(models, bad.name, verify_hashes=False)
    np.savez(bad / "spend.npz", frequency=spend.frequency[:-1], monetary=spend.monetary[:-1])
    with pytest.raises(CorruptArtifactError):  # its size or shape
        load_bundle(models, bad.name, verify_hashes=False)
    assert load_bundle(models, path.name).spend is None


def _timing_step(frame: pd.DataFrame):
    from recommender.data.ids import IdIndex
    from training.config import TrainConfig
    from training.timing_step import fit_timing_models

    frame = frame.copy()
    frame["timestamp"] = pd.to_datetime(frame["timestamp"])
    customers = IdIndex.from_values(frame["customer_id"])
    items = IdIndex.from_values(frame["item_id"])
    end = frame["timestamp"].max().normalize() + pd.Timedelta(days=1)
    warnings: list[str] = []
    fitted = fit_timing_models(frame, customers, items, end, TrainConfig(), warn=warnings.append)
    return fitted, warnings


def test_spend_that_depends_on_frequency_is_warned_about_and_free_orders_counted():
    frame = generate_shop("demo", n_customers=N_CUSTOMERS, n_items=N_ITEMS, seed=1).transactions
    fitted, warnings = _timing_step(frame)
    calm = fitted.metrics["spend"]
    assert abs(calm["frequency_correlation"]) < 0.3 and calm["nonpositive_orders"] == 0
    assert not any("depends on frequency" in w for w in warnings)
    assert "rmse" in calm and set(calm["baselines"]) == {"past_rate", "average_rate"}
    assert calm["window"].startswith("last window") and "fit_before_window" in calm
    # the customers who order most days spend most per order; some orders are free
    days = pd.to_datetime(frame["timestamp"]).dt.normalize()
    order_days = days.groupby(frame["customer_id"]).transform("nunique")
    skewed = frame.assign(quantity=1, price=order_days.to_numpy() * 5.0)
    free = skewed.index[skewed["customer_id"] == skewed["customer_id"].iloc[-1]]
    skewed.loc[free, "price"] = 0.0
    fitted, warnings = _timing_step(skewed)
    spend = fitted.metrics["spend"]
    assert spend["frequency_correlation"] > 0.3
    assert any(
        "order value depends on frequency here" in w
        and "the spend model's independence assumption is weak" in w
        for w in warnings
    )
    assert spend["nonpositive_orders"] > 0
    assert any("of value 0 or less" in w for w in warnings)
    assert fitted.spend is not None and fitted.health is not None

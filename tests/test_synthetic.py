"""The generated shops have the structure the model comparisons rely on."""

import numpy as np
import pandas as pd
import pytest

from recommender.data.synthetic import generate_interactions, generate_shop, write_shop


@pytest.fixture(scope="module")
def demo():
    return generate_shop("demo", seed=0)


def test_schema(demo):
    tx, cat = demo.transactions, demo.catalog
    assert list(tx.columns) == ["customer_id", "item_id", "timestamp", "quantity", "price"]
    assert list(cat.columns) == ["item_id", "title", "category", "price", "available"]
    assert pd.api.types.is_datetime64_any_dtype(tx["timestamp"])
    assert (tx["quantity"] >= 1).all() and (tx["price"] > 0).all()
    assert tx["timestamp"].min() >= pd.Timestamp("2025-01-01")
    assert tx["timestamp"].max() < pd.Timestamp("2026-01-01")
    assert set(tx["item_id"]) <= set(cat["item_id"])
    assert cat["item_id"].is_unique and cat["title"].is_unique
    assert 8 <= cat["category"].nunique() <= 12
    assert 0.0 < (~cat["available"]).mean() < 0.15


def test_deterministic_and_seeded(demo):
    again = generate_shop("demo", seed=0)
    pd.testing.assert_frame_equal(demo.transactions, again.transactions)
    other = generate_shop("demo", seed=1)
    assert not demo.transactions.head(200).equals(other.transactions.head(200))


def test_taste_groups_share_items(demo):
    """Customers of one group overlap in items far more than across groups."""
    tx = demo.transactions
    group = dict(zip(demo.truth["customer_ids"], demo.truth["customer_group"], strict=True))
    baskets = tx.groupby("customer_id")["item_id"].agg(set)
    ids = baskets.index.to_numpy()
    rng = np.random.default_rng(0)
    same, diff = [], []
    for _ in range(3000):
        a, b = rng.choice(len(ids), 2, replace=False)
        j = len(baskets.iloc[a] & baskets.iloc[b]) / len(baskets.iloc[a] | baskets.iloc[b])
        (same if group[ids[a]] == group[ids[b]] else diff).append(j)
    assert np.mean(same) > 3 * np.mean(diff)


def test_consumables_are_rebought_near_their_cycle(demo):
    tx = demo.transactions.copy()
    truth = demo.truth
    cycle = dict(zip(truth["item_ids"], truth["item_cycle_days"], strict=True))
    tx["day"] = (tx["timestamp"] - tx["timestamp"].min()).dt.total_seconds() / 86400
    tx = tx.sort_values(["customer_id", "item_id", "day"])
    gaps = tx.groupby(["customer_id", "item_id"])["day"].diff()
    tx["gap"] = gaps
    rebuys = tx.dropna(subset=["gap"])
    ratios = rebuys["gap"] / rebuys["item_id"].map(cycle)
    consumable = np.isfinite(rebuys["item_id"].map(cycle))
    assert consumable.mean() > 0.6  # most rebuys are consumables on a cycle
    assert 0.7 < ratios[consumable].median() < 1.3


def test_popularity_is_skewed(demo):
    counts = demo.transactions["item_id"].value_counts()
    top = counts.iloc[: max(1, len(counts) // 10)].sum()
    assert top / counts.sum() > 0.3


def test_presets_differ_in_repeat_share():
    def repeat_share(preset):
        tx = generate_shop(preset, seed=0).transactions
        return tx.duplicated(["customer_id", "item_id"]).mean()

    assert repeat_share("grocery") > 0.5 > repeat_share("demo") > repeat_share("fashion")


def test_customers_churn_and_arrive_over_time(demo):
    t = demo.truth
    assert np.isfinite(t["customer_churn_day"]).mean() > 0.3
    first = demo.transactions.groupby("customer_id")["timestamp"].min()
    assert first.max() - first.min() > pd.Timedelta(days=200)


def test_write_shop(demo, tmp_path):
    paths = write_shop(demo, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["items.csv", "transactions.csv"]
    back = pd.read_csv(paths["transactions"])
    assert len(back) == len(demo.transactions)


def test_large_generator():
    f = generate_interactions(2000, 300, 50_000, seed=0)
    assert len(f) == 50_000
    assert f["customer_id"].nunique() > 1000
    assert f["item_id"].value_counts().iloc[0] > 5 * 50_000 / 300


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset"):
        generate_shop("nope")


def test_next_weeks_brings_new_customers_new_items_and_churn():
    from recommender.data.synthetic import next_weeks

    shop = generate_shop("demo", seed=0)
    later = next_weeks(shop, 2, seed=1)
    end = shop.transactions["timestamp"].max().normalize() + pd.Timedelta(days=1)
    old = later.transactions[later.transactions["timestamp"] < end]
    new = later.transactions[later.transactions["timestamp"] >= end]
    # the first weeks are the same log
    pd.testing.assert_frame_equal(
        old.reset_index(drop=True),
        shop.transactions.astype({"customer_id": str, "item_id": str}),
    )
    assert new["timestamp"].max() < end + pd.Timedelta(days=14)
    truth = later.truth
    assert new["customer_id"].isin(truth["new_customer_ids"]).any()
    assert new["item_id"].isin(truth["new_item_ids"]).any()
    assert set(truth["new_item_ids"]) <= set(later.catalog["item_id"])
    churned = set(truth["churned_customer_ids"])
    assert churned and not churned & set(new["customer_id"])
    # known customers keep buying too
    known = new[~new["customer_id"].isin(truth["new_customer_ids"])]
    assert len(known) > len(new) / 3
    again = next_weeks(shop, 2, seed=1)
    pd.testing.assert_frame_equal(later.transactions, again.transactions)

"""``training.pipeline.train`` end to end on a small shop with known taste groups."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import training.stages as stages
from recommender.data.transactions import DataError, load_transactions
from recommender.store.artifacts import (
    MANIFEST,
    CorruptArtifactError,
    VersionWriter,
    current_version,
    list_versions,
    sha256_file,
)
from recommender.store.bundle import load_bundle
from training import ranking
from training.config import ALSConfig, SearchConfig, TrainConfig
from training.pipeline import TrainingError, train

N_CUSTOMERS, N_ITEMS, N_GROUPS, DAYS = 300, 100, 4, 120
START = pd.Timestamp("2024-01-01")
# rows appended to the clean log: (customer, item, time, quantity); one bad row each
BAD_ROWS = [
    ("C0001", "SKU-001", "2024-02-01T10:00:00", "-2"),  # a return
    ("", "SKU-002", "2024-02-01T10:00:00", "1"),  # no customer
    ("C0002", "SKU-003", "31/02/2024", "1"),  # not a time
]


def make_shop(seed: int = 0) -> pd.DataFrame:
    """Customers in taste groups, each buying mostly the group's items (Zipf within it).

    Customer ``c`` belongs to group ``c % 4`` and items ``25 g .. 25 g + 24`` to
    group ``g``; 85 % of a customer's order lines come from the group.
    """
    rng = np.random.default_rng(seed)
    per_group = N_ITEMS // N_GROUPS
    zipf = 1.0 / np.arange(1, per_group + 1) ** 0.8
    zipf /= zipf.sum()
    rows = []
    for c in range(N_CUSTOMERS):
        g = c % N_GROUPS
        n = 2 + rng.poisson(7)
        own = rng.random(n) < 0.85
        items = np.where(
            own,
            g * per_group + rng.choice(per_group, size=n, p=zipf),
            rng.integers(N_ITEMS, size=n),
        )
        secs = np.sort(rng.uniform(0, DAYS * 86400, size=n)).astype(np.int64)
        for it, s in zip(items, secs, strict=True):
            rows.append(
                (
                    f"C{c:04d}",
                    f"SKU-{it:03d}",
                    (START + pd.Timedelta(seconds=int(s))).isoformat(),
                    str(int(rng.integers(1, 4))),
                    f"{1 + it % 17:.2f}",
                )
            )
    return pd.DataFrame(rows, columns=["customer_id", "item_id", "timestamp", "quantity", "price"])


def write_log(path: Path, frame: pd.DataFrame, bad_rows: bool = True) -> Path:
    if bad_rows:
        extra = pd.DataFrame(
            [(c, i, t, q, "1.00") for c, i, t, q in BAD_ROWS], columns=frame.columns
        )
        frame = pd.concat([frame, extra], ignore_index=True)
    frame.to_csv(path, index=False)
    return path


def fast_config(**kw) -> TrainConfig:
    return TrainConfig(
        timing=False,
        top_n=20,
        als=ALSConfig(factors=16, iterations=10),
        max_eval_customers=1000,
        **kw,
    )


def quiet(msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def shop():
    return make_shop()


@pytest.fixture(scope="module")
def log_path(shop, tmp_path_factory) -> Path:
    return write_log(tmp_path_factory.mktemp("shop") / "orders.csv", shop)


@pytest.fixture(scope="module")
def trained(log_path, tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    result = train(log_path, models_dir=models, config=fast_config(), say=quiet)
    return models, result


def test_a_version_is_published_with_a_complete_manifest(trained, log_path):
    models, result = trained
    assert result.published and current_version(models) == result.version
    assert list_versions(models) == [result.version]
    man = json.loads((models / result.version / MANIFEST).read_text())
    assert man == result.manifest
    # validation counts: every appended bad row is counted under its reason
    val = man["validation"]
    assert val["dropped"]["non_positive_quantity"] == 1
    assert val["dropped"]["missing_customer_id"] == 1
    assert val["dropped"]["unparseable_timestamp"] == 1
    assert val["rows_dropped"] == 3 and val["rows_read"] == val["rows_kept"] + 3
    assert val["first_offence"]["unparseable_timestamp"]["value"] == "31/02/2024"
    # the data fingerprint is that of the checked log
    assert man["data"] == load_transactions(log_path).fingerprint()
    assert man["data"]["customers"] == N_CUSTOMERS and man["data"]["items"] == N_ITEMS
    # metrics for ALS, the four baselines and the two-stage ranker, all proper nDCGs
    rank = man["metrics"]["ranking"]
    assert set(rank) == {
        "als", "popularity", "item_knn", "personal_frequency", "p_topfreq", "tifu_knn", "ranker"
    }  # fmt: skip
    served = man["serving"]["list"]
    best = max((n for n in rank if n != "ranker"), key=lambda n: rank[n]["ndcg@10"])
    # never worse than the best baseline: the ranker only when it beats it
    assert served == ("ranker" if rank["ranker"]["ndcg@10"] > rank[best]["ndcg@10"] else best)
    for name, m in rank.items():
        assert 0.0 <= m["ndcg@10"] <= 1.0, name
    assert man["metrics"]["ranking_window"]["customers"] > 50
    # a sha256 for every file, matching the bytes on disk
    files = man["files"]
    assert {"customers.npy", "items.npy", "history.npz", "als.npz", "topn.npz"} <= set(files)
    for name, info in files.items():
        assert sha256_file(models / result.version / name) == info["sha256"], name
    assert man["schema_version"] == 1 and man["created_at"]
    assert man["libraries"]["numpy"] == np.__version__
    assert man["config"]["timing"] is False and man["config"]["als"]["factors"] == 16
    assert man["components"] == {
        "als": True, "topn": True, "timing": False, "repurchase": False, "spend": False,
        "health": False, "ranker": man["serving"]["list"] == "ranker",
    }  # fmt: skip


def test_als_beats_popularity_on_taste_groups(trained):
    _, result = trained
    rank = result.manifest["metrics"]["ranking"]
    assert rank["als"]["ndcg@10"] > 1.3 * rank["popularity"]["ndcg@10"], rank


def test_published_model_recommends_the_customers_group(trained):
    models, _ = trained
    b = load_bundle(models)
    per_group = N_ITEMS // N_GROUPS
    rows = b.customers.rows([f"C{c:04d}" for c in range(40)])
    picks, _ = b.als.recommend(rows, b.history, k=5)
    groups = np.array([int(b.items.id(i)[4:]) // per_group for i in picks.ravel()])
    expected = np.repeat(np.arange(40) % N_GROUPS, 5)
    assert (groups == expected).mean() > 0.8


def test_as_of_drops_later_rows_and_counts_them(shop, tmp_path):
    log = write_log(tmp_path / "orders.csv", shop, bad_rows=False)
    as_of = "2024-04-10"
    later = int((pd.to_datetime(shop["timestamp"]) >= pd.Timestamp("2024-04-11")).sum())
    assert later > 0
    result = train(log, models_dir=tmp_path / "m", as_of=as_of, config=fast_config(), say=quiet)
    man = result.manifest
    assert man["validation"]["dropped"]["after_as_of"] == later
    assert man["validation"]["rows_kept"] == len(shop) - later
    assert man["data"]["rows"] == len(shop) - later
    assert pd.Timestamp(man["data"]["time_max"]) < pd.Timestamp("2024-04-11")
    assert pd.Timestamp(man["as_of"]) == pd.Timestamp("2024-04-11")
    # the evaluation window ends at --as-of, not at the end of the file
    assert pd.Timestamp(man["metrics"]["ranking_window"]["end"]) == pd.Timestamp("2024-04-11")


def test_rows_after_today_are_dropped_without_as_of(shop, tmp_path):
    future = shop.iloc[:2].assign(timestamp=["2099-01-01", "2099-01-02"])
    log = write_log(tmp_path / "o.csv", pd.concat([shop, future]), bad_rows=False)
    result = train(log, models_dir=tmp_path / "m", config=fast_config(), say=quiet)
    assert result.manifest["validation"]["dropped"]["after_as_of"] == 2
    assert result.manifest["data"]["time_max"] < "2025"


def test_strict_fails_before_writing_anything(log_path, tmp_path):
    with pytest.raises(DataError, match="--strict"):
        train(log_path, models_dir=tmp_path / "m", strict=True, config=fast_config(), say=quiet)
    # only the store's lock file (an flock needs a file that stays) may be there
    left = [p.name for p in (tmp_path / "m").iterdir()] if (tmp_path / "m").exists() else []
    assert left in ([], [".lock"])


@pytest.fixture
def published_copy(trained, tmp_path):
    models, result = trained
    dst = tmp_path / "models"
    shutil.copytree(models, dst)
    return dst, result.version


def _assert_untouched(models: Path, version: str) -> None:
    assert current_version(models) == version
    assert list_versions(models) == [version]
    assert not [p.name for p in models.iterdir() if p.name.startswith(".tmp")]
    assert load_bundle(models).version == version


def test_crash_while_fitting_leaves_the_published_version(published_copy, log_path, monkeypatch):
    models, version = published_copy
    calls = []

    def boom(*a, **k):
        calls.append(1)
        raise MemoryError("simulated crash in the middle of fitting")

    monkeypatch.setattr(ranking, "fit_als", boom)
    with pytest.raises(MemoryError):
        train(log_path, models_dir=models, config=fast_config(), say=quiet)
    assert calls, "the crash was not injected where training fits ALS"
    _assert_untouched(models, version)


def test_crash_while_writing_leaves_the_published_version(published_copy, log_path, monkeypatch):
    models, version = published_copy
    real = VersionWriter.write_arrays

    def failing(self, name, arrays):
        if name == "als.npz":
            raise OSError("no space left on device")
        return real(self, name, arrays)

    monkeypatch.setattr(VersionWriter, "write_arrays", failing)
    with pytest.raises(OSError):
        train(log_path, models_dir=models, config=fast_config(), say=quiet)
    _assert_untouched(models, version)


def test_failed_read_back_leaves_no_new_complete_version(published_copy, log_path, monkeypatch):
    models, version = published_copy

    def refuse(path, **kw):
        raise CorruptArtifactError(f"{path}: simulated failure of the read-back check")

    # the write stage imported the name, so patch it where it is used
    monkeypatch.setattr(stages, "load_bundle_dir", refuse)
    with pytest.raises(CorruptArtifactError):
        train(log_path, models_dir=models, config=fast_config(), say=quiet)
    assert current_version(models) == version
    assert list_versions(models) == [version]


def test_no_publish_writes_but_keeps_current(published_copy, log_path):
    models, version = published_copy
    result = train(log_path, models_dir=models, config=fast_config(), do_publish=False, say=quiet)
    assert not result.published and current_version(models) == version
    assert sorted(list_versions(models)) == sorted([version, result.version])


def _single_item_log(path: Path) -> Path:
    """A CDNOW-like log: customers and dates, no item detail (one item id)."""
    rng = np.random.default_rng(1)
    rows = []
    for c in range(120):
        n = 1 + rng.poisson(3)
        for d in np.sort(rng.integers(0, 360, size=n)):
            rows.append(
                (f"K{c:03d}", "CD", (pd.Timestamp("1997-01-01") + pd.Timedelta(days=int(d))).date())
            )
    pd.DataFrame(rows, columns=["customer_id", "item_id", "timestamp"]).to_csv(path, index=False)
    return path


def test_single_item_log_trains_without_the_ranking_model(tmp_path):
    log = _single_item_log(tmp_path / "cdnow.csv")
    # without the timing model nothing was judged, so the gate holds it back
    held = train(log, models_dir=tmp_path / "m", config=fast_config(), say=quiet)
    assert held.held_back and not held.published
    result = train(log, models_dir=tmp_path / "m", config=fast_config(), force=True, say=quiet)
    assert result.published
    assert any("ranking model skipped" in w for w in result.warnings)
    man = result.manifest
    assert man["components"]["als"] is False and "ranking" not in man["metrics"]
    assert "als.npz" not in man["files"]
    b = load_bundle(tmp_path / "m")
    assert b.als is None and b.n_items == 1


def test_single_item_log_trains_the_timing_model(tmp_path):
    pytest.importorskip("recommender.timing")
    log = _single_item_log(tmp_path / "cdnow.csv")
    cfg = TrainConfig(timing=True, top_n=20)
    result = train(log, models_dir=tmp_path / "m", config=cfg, say=quiet)
    man = result.manifest
    assert man["components"]["als"] is False and man["components"]["timing"] is True
    assert "timing" in man["metrics"]
    assert load_bundle(tmp_path / "m").timing is not None


def test_a_log_without_purchases_is_a_training_error(tmp_path):
    p = tmp_path / "views.csv"
    p.write_text("customer_id,item_id,timestamp,event\na,x,2024-01-01,view\nb,y,2024-01-02,view\n")
    with pytest.raises(TrainingError, match="no purchase"):
        train(p, models_dir=tmp_path / "m", config=fast_config(), say=quiet)
    assert current_version(tmp_path / "m") is None


def test_column_mapping_for_the_log_does_not_break_a_canonical_catalog(tmp_path):
    log = tmp_path / "retail.csv"
    make_shop().rename(
        columns={"customer_id": "CustomerID", "item_id": "StockCode", "timestamp": "InvoiceDate"}
    ).to_csv(log, index=False)
    items = tmp_path / "items.csv"
    pd.DataFrame({"item_id": [f"SKU-{i:03d}" for i in range(N_ITEMS)], "title": "thing"}).to_csv(
        items, index=False
    )
    result = train(
        log,
        items_path=items,
        columns={"customer_id": "CustomerID", "item_id": "StockCode", "timestamp": "InvoiceDate"},
        models_dir=tmp_path / "m",
        config=fast_config(),
        say=quiet,
    )
    assert result.published


# --- hyperparameter search ------------------------------------------------------


def test_small_logs_are_searched_by_default_and_the_best_trial_is_chosen(log_path, tmp_path):
    said: list[str] = []
    cfg = fast_config(search=SearchConfig(max_trials=4))
    result = train(log_path, models_dir=tmp_path, config=cfg, say=said.append)
    assert any("search on" in line for line in said)
    trials = result.manifest["search"]["trials"]
    assert 1 < len(trials) <= 4
    assert trials[0]["config"] == dataclasses.asdict(cfg.als)  # the defaults go first
    best = max(trials, key=lambda t: t["metrics"]["ndcg@10"])
    assert result.manifest["config"]["als_chosen"] == best["config"]


@pytest.mark.parametrize(
    "search",
    [SearchConfig(enabled=False), SearchConfig(auto_max_rows=100)],
    ids=["--no-search", "log larger than auto_max_rows"],
)
def test_no_search_when_off_or_the_log_is_large(log_path, tmp_path, search):
    said: list[str] = []
    cfg = fast_config(search=search)
    result = train(log_path, models_dir=tmp_path, config=cfg, say=said.append)
    assert result.manifest["search"] is None
    assert result.manifest["config"]["als_chosen"] == dataclasses.asdict(cfg.als)
    assert not any("hyperparameter search" in line for line in said)


@pytest.mark.parametrize("search", [False, True], ids=["--no-search", "--search"])
def test_published_model_gets_the_configured_sweeps(log_path, tmp_path, monkeypatch, search):
    """iterations - refit_iterations sweeps on the history (and in every search
    trial, which stands for that fit), then refit_iterations warm on the whole log."""
    sweeps: list[tuple[int, bool]] = []
    real = ranking.fit_als

    def spy(matrix, cfg, seed, **kw):
        sweeps.append((kw.get("iterations", cfg.iterations), kw.get("warm_start") is not None))
        return real(matrix, cfg, seed, **kw)

    monkeypatch.setattr(ranking, "fit_als", spy)
    monkeypatch.setattr("training.search.fit_als", spy)
    # the ranker fits ALS at its own cutoffs too: only the pipeline's fits here
    cfg = fast_config(search=SearchConfig(enabled=search, max_trials=2), ranker=False)
    result = train(log_path, models_dir=tmp_path, config=cfg, say=quiet)
    chosen = result.manifest["config"]["als_chosen"]
    assert sweeps[-1] == (chosen["refit_iterations"], True)
    assert sweeps[-2] == (chosen["iterations"] - chosen["refit_iterations"], False)
    trials = result.manifest["search"]["trials"] if search else []
    assert len(sweeps) == 2 + len(trials)
    for (n, warm), trial in zip(sweeps, trials, strict=False):
        tried = trial["config"]
        assert (n, warm) == (tried["iterations"] - tried["refit_iterations"], False)


def test_timing_models_fitted_before_als_report_in_order(shop, tmp_path):
    """The background fit runs beside the split and the baselines, ALS waits
    for it, and its warnings reach the run's warnings, the manifest and the
    printed log, after the step that waits for it."""
    once = shop.drop_duplicates(["customer_id", "item_id"])  # nobody rebuys an item
    log = write_log(tmp_path / "once.csv", once, bad_rows=False)
    lines: list[str] = []
    cfg = dataclasses.replace(fast_config(), timing=True)
    result = train(log, models_dir=tmp_path / "m", config=cfg, say=lines.append)
    note = "buy-again model: no item is rebought by enough customers; none published"
    assert note in result.warnings and note in result.manifest["warnings"]
    waited = next(i for i, s in enumerate(lines) if s.startswith("[done] finish the next-purchase"))
    assert lines.index(f"[warn] {note}") > waited
    assert any(s.startswith("[done] evaluate the baselines") for s in lines[:waited])
    assert not any("ALS" in s for s in lines[:waited])
    assert any(s.startswith("[done] fit ALS on the history") for s in lines[waited:])
    assert "next-purchase and buy-again models (own time)" in result.manifest["timings_s"]
    assert result.manifest["components"]["timing"] is True
    assert result.manifest["components"]["repurchase"] is False


def test_a_failed_calibration_plot_is_a_warning(log_path, tmp_path, monkeypatch):
    import training.timing_step

    def broken(judged):
        raise RuntimeError("no fonts")

    monkeypatch.setattr(training.timing_step, "calibration_report", broken)
    cfg = dataclasses.replace(fast_config(), timing=True)
    result = train(log_path, models_dir=tmp_path / "m", config=cfg, say=quiet)
    assert result.published
    assert "calibration plot not written: no fonts" in result.manifest["warnings"]
    assert "timing_calibration.png" not in result.manifest["files"]
    assert "calibration" in result.manifest["metrics"]["timing"]


@pytest.mark.parametrize("step", ["evaluate_baselines", "fit_als"])
def test_crash_in_ranking_waits_for_the_background_fit(published_copy, log_path, monkeypatch, step):
    """A crash while the background fit runs (judging the baselines) or after
    it (fitting ALS) leaves no thread behind and the published version as it was."""
    import threading

    models, version = published_copy

    def boom(*a, **k):
        raise MemoryError("simulated crash in the middle of fitting")

    monkeypatch.setattr(ranking, step, boom)
    cfg = dataclasses.replace(fast_config(), timing=True)
    with pytest.raises(MemoryError):
        train(log_path, models_dir=models, config=cfg, say=quiet)
    assert not [t for t in threading.enumerate() if t.name.startswith("encore-timing")]
    _assert_untouched(models, version)


def test_split_is_the_same_for_a_log_in_time_order_and_shuffled(shop):
    """A log in time order (as loaded) is split by slicing; any other order by
    filtering. Both give the same history, window and evaluated customers,
    with rows stamped exactly at the cut on the window's side."""
    from recommender.data.ids import IdIndex

    frame = shop.sort_values("timestamp", kind="stable").reset_index(drop=True)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"]).dt.floor("D")  # ties at the cut
    frame["weight"] = 1.0
    customers = IdIndex.from_values(frame["customer_id"])
    items = IdIndex.from_values(frame["item_id"])
    end = frame["timestamp"].max() + pd.Timedelta(days=1)
    cut = end - pd.Timedelta(days=28)
    shuffled = frame.sample(frac=1.0, random_state=0)
    a = ranking.make_split(frame, frame, customers, items, cut, end)
    b = ranking.make_split(shuffled, shuffled, customers, items, cut, end)
    assert frame["timestamp"].eq(cut).any()
    assert len(a.train) == len(b.train) == int((frame["timestamp"] < cut).sum())
    assert (a.counts != b.counts).nnz == 0 and (a.relevant != b.relevant).nnz == 0
    np.testing.assert_array_equal(a.users, b.users)
    assert a.relevant.sum() == int(((frame["timestamp"] >= cut) & (frame["timestamp"] < end)).sum())


def test_split_from_the_whole_log_counts_is_the_same(shop):
    """A log of orders alone passes its whole count matrix: the history is
    that minus the window when the window reaches the end of the log, and is
    built from the rows when it does not (the search's validation window)."""
    from recommender.data.ids import IdIndex
    from recommender.data.interactions import build_matrix

    frame = shop.sort_values("timestamp", kind="stable").reset_index(drop=True)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"])
    frame["weight"] = 1.0
    customers = IdIndex.from_values(frame["customer_id"])
    items = IdIndex.from_values(frame["item_id"])
    total = build_matrix(frame, customers, items)
    end = frame["timestamp"].max().normalize() + pd.Timedelta(days=1)
    for cut, stop in (
        (end - pd.Timedelta(days=28), end),
        (end - pd.Timedelta(days=56), end - pd.Timedelta(days=28)),
    ):
        a = ranking.make_split(frame, frame, customers, items, cut, stop)
        b = ranking.make_split(frame, frame, customers, items, cut, stop, total=total)
        assert a.counts.nnz == b.counts.nnz > 0
        assert (a.counts != b.counts).nnz == 0 and (a.relevant != b.relevant).nnz == 0
        assert b.counts.has_sorted_indices and b.counts.dtype == np.float32
        np.testing.assert_array_equal(a.users, b.users)


def test_a_ranker_that_cannot_be_trained_leaves_als_served(log_path, tmp_path, monkeypatch):
    """A weekly run must not die of its ranker: it warns and serves ALS's list."""

    def broken(**_kw):
        raise RuntimeError("LightGBM could not build its dataset")

    monkeypatch.setattr("training.stages.fit_two_stage", broken)
    result = train(log_path, models_dir=tmp_path, config=fast_config(), say=quiet)
    assert result.published and result.manifest["serving"]["list"] == "als"
    assert any("two-stage ranker not trained" in w for w in result.warnings)
    assert not result.manifest["components"]["ranker"]

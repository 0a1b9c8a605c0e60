"""The artifact store: atomic versions, verified loads, named errors."""

import json

import numpy as np
import pytest
import scipy.sparse as sp

from recommender.data.ids import IdIndex
from recommender.ranking.als import ALSRecommender
from recommender.store.artifacts import (
    CorruptArtifactError,
    IncompatibleArtifactError,
    NoModelError,
    VersionWriter,
    current_version,
    list_versions,
    prune_versions,
    publish,
    sha256_file,
)
from recommender.store.bundle import Catalog, load_bundle, save_bundle


def small_bundle(models_dir, seed=0):
    rng = np.random.default_rng(seed)
    m = sp.random(80, 30, density=0.1, format="csr", dtype=np.float32, random_state=seed)
    m.data[:] = rng.integers(1, 4, size=m.nnz)
    als = ALSRecommender(factors=4, iterations=3).fit(m)
    path = save_bundle(
        models_dir,
        customers=IdIndex([f"c{i:03d}" for i in range(80)]),
        items=IdIndex([f"i{i:03d}" for i in range(30)]),
        history=m,
        popularity=np.linspace(1, 0, 30).astype(np.float32),
        catalog=Catalog.empty(30),
        manifest={"config": {"seed": seed}},
        als=als,
    )
    return path, als, m


def test_round_trip_gives_the_same_top_n(tmp_path):
    path, als, m = small_bundle(tmp_path)
    publish(tmp_path, path.name)
    b = load_bundle(tmp_path)
    assert b.version == path.name == current_version(tmp_path)
    a, _ = als.recommend(np.arange(80), m, k=5)
    c, _ = b.als.recommend(np.arange(80), b.history, k=5)
    np.testing.assert_array_equal(a, c)
    assert b.customers.row("c007") == 7 and b.items.row("nope") is None
    man = json.loads((path / "manifest.json").read_text())
    assert man["schema_version"] == 1 and man["format"] == "encore-bundle"
    for name, info in man["files"].items():
        assert sha256_file(path / name) == info["sha256"]


def test_crash_inside_writer_leaves_nothing(tmp_path):
    path, _, _ = small_bundle(tmp_path)
    publish(tmp_path, path.name)
    with pytest.raises(RuntimeError):
        with VersionWriter(tmp_path) as w:
            w.write_array("x.npy", np.arange(3))
            raise RuntimeError("killed mid-training")
    assert list_versions(tmp_path) == [path.name]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []
    assert current_version(tmp_path) == path.name


def test_object_arrays_are_refused(tmp_path):
    with VersionWriter(tmp_path) as w, pytest.raises(TypeError, match="pickle"):
        w.write_array("o.npy", np.array([{"a": 1}], dtype=object))


def test_no_model(tmp_path):
    with pytest.raises(NoModelError, match="encore train"):
        load_bundle(tmp_path)


def _corrupt_variants(path):
    yield (
        "truncated",
        lambda: (path / "als.npz").write_bytes((path / "als.npz").read_bytes()[:100]),
        CorruptArtifactError,
    )
    yield "changed bytes", lambda: _flip(path / "items.npy"), CorruptArtifactError
    yield "missing file", lambda: (path / "popularity.npy").unlink(), CorruptArtifactError
    yield "schema", lambda: _edit(path, schema_version=99), IncompatibleArtifactError
    yield "not a manifest", lambda: (path / "manifest.json").write_text("{"), CorruptArtifactError


def _flip(p):
    data = bytearray(p.read_bytes())
    data[-1] ^= 0xFF
    p.write_bytes(bytes(data))


def _edit(path, **changes):
    man = json.loads((path / "manifest.json").read_text())
    man.update(changes)
    (path / "manifest.json").write_text(json.dumps(man))


@pytest.mark.parametrize(
    "kind", ["truncated", "changed bytes", "missing file", "schema", "not a manifest"]
)
def test_corrupt_versions_are_refused_with_a_named_error(tmp_path, kind):
    path, _, _ = small_bundle(tmp_path)
    for name, damage, error in _corrupt_variants(path):
        if name == kind:
            damage()
            with pytest.raises(error):
                load_bundle(tmp_path, path.name)


def test_nan_factors_are_refused_even_with_matching_hashes(tmp_path):
    path, als, _ = small_bundle(tmp_path)
    bad = als.user_factors_.copy()
    bad[0, 0] = np.nan
    with open(path / "als.npz", "wb") as fh:
        np.savez(fh, user_factors=bad, item_factors=als.item_factors_)
    man = json.loads((path / "manifest.json").read_text())
    man["files"]["als.npz"]["sha256"] = sha256_file(path / "als.npz")
    man["files"]["als.npz"]["bytes"] = (path / "als.npz").stat().st_size
    (path / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(CorruptArtifactError, match="NaN"):
        load_bundle(tmp_path, path.name)


def test_prune_keeps_the_published_version(tmp_path):
    first, _, _ = small_bundle(tmp_path, seed=0)
    publish(tmp_path, first.name)
    for s in (1, 2, 3):
        small_bundle(tmp_path, seed=s)
    everything = list_versions(tmp_path)
    removed = prune_versions(tmp_path, keep=2)
    left = list_versions(tmp_path)
    # the two newest (names sort by time), and the published one whatever its age
    assert set(left) == set(everything[-2:]) | {first.name}
    assert set(removed) == set(everything) - set(left)

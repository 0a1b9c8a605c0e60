"""The artifact store: atomic versions, the ``current`` pointer, verified loads."""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from recommender.data.ids import IdIndex
from recommender.ranking.als import ALSRecommender
from recommender.store.artifacts import (
    CURRENT_POINTER,
    MANIFEST,
    SCHEMA_VERSION,
    ArtifactError,
    CorruptArtifactError,
    IncompatibleArtifactError,
    NoModelError,
    VersionReader,
    VersionWriter,
    current_version,
    list_versions,
    prune_versions,
    publish,
    remove_stale_temporaries,
    sha256_file,
)
from recommender.store.bundle import Catalog, load_bundle, load_bundle_dir, save_bundle

N_C, N_I = 60, 25


@pytest.fixture(scope="module")
def fitted():
    """A tiny fitted ALS model and its purchase matrix (fitted once per module)."""
    rng = np.random.default_rng(7)
    m = sp.random(N_C, N_I, density=0.15, format="csr", dtype=np.float32, random_state=7)
    m.data[:] = rng.integers(1, 4, size=m.nnz)
    als = ALSRecommender(factors=4, iterations=3, random_state=0, num_threads=1).fit(m)
    return als, m


def write_version(models_dir: Path, fitted, version: str | None = None, **extra) -> Path:
    als, m = fitted
    catalog = Catalog.empty(N_I)
    catalog.title = np.array([f"title {i}" for i in range(N_I)])
    catalog.price = np.linspace(1.0, 9.0, N_I)
    return save_bundle(
        models_dir,
        customers=IdIndex([f"c{i:03d}" for i in range(N_C)]),
        items=IdIndex([f"i{i:03d}" for i in range(N_I)]),
        history=m,
        popularity=np.linspace(1, 0, N_I).astype(np.float32),
        catalog=catalog,
        manifest={"config": {"note": "test"}},
        als=als,
        version=version,
        **extra,
    )


def entries(models_dir: Path) -> set[str]:
    return {p.name for p in models_dir.iterdir()}


def reseal(version_dir: Path, name: str) -> None:
    """Update the manifest's hash and size of ``name`` so only deeper checks can object."""
    path = version_dir / MANIFEST
    man = json.loads(path.read_text())
    man["files"][name]["sha256"] = sha256_file(version_dir / name)
    man["files"][name]["bytes"] = (version_dir / name).stat().st_size
    path.write_text(json.dumps(man))


def edit_manifest(version_dir: Path, fn) -> None:
    path = version_dir / MANIFEST
    man = json.loads(path.read_text())
    fn(man)
    path.write_text(json.dumps(man))


def rewrite_npz(version_dir: Path, name: str, fn) -> None:
    with np.load(version_dir / name, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    fn(arrays)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    (version_dir / name).write_bytes(buf.getvalue())


# --- writing ---------------------------------------------------------------------


def test_exception_inside_the_writer_leaves_no_directory_and_current_unchanged(tmp_path, fitted):
    first = write_version(tmp_path, fitted)
    publish(tmp_path, first.name)
    before = entries(tmp_path)
    with pytest.raises(RuntimeError, match="crash"):
        with VersionWriter(tmp_path, "doomed") as w:
            w.write_array("items.npy", np.arange(3))
            assert w.tmp_dir.is_dir()
            raise RuntimeError("crash while writing")
    assert entries(tmp_path) == before
    assert not (tmp_path / "doomed").exists()
    assert current_version(tmp_path) == first.name
    assert load_bundle(tmp_path).version == first.name


def test_crash_inside_save_bundle_leaves_the_store_as_it_was(tmp_path, fitted, monkeypatch):
    first = write_version(tmp_path, fitted)
    publish(tmp_path, first.name)
    before = entries(tmp_path)
    real = VersionWriter.write_arrays

    def failing(self, name, arrays):
        if name == "als.npz":
            raise OSError("disk full")
        return real(self, name, arrays)

    monkeypatch.setattr(VersionWriter, "write_arrays", failing)
    with pytest.raises(OSError, match="disk full"):
        write_version(tmp_path, fitted)
    assert entries(tmp_path) == before
    assert list_versions(tmp_path) == [first.name]
    assert current_version(tmp_path) == first.name


def test_a_version_appears_only_when_complete(tmp_path, fitted):
    with VersionWriter(tmp_path, "v1") as w:
        w.write_array("a.npy", np.arange(4))
        # while writing, readers see nothing: no version, no directory named v1
        assert list_versions(tmp_path) == [] and not (tmp_path / "v1").exists()
        final = w.commit({"config": {}})
    assert final == tmp_path / "v1" and list_versions(tmp_path) == ["v1"]
    assert not [n for n in entries(tmp_path) if n.startswith(".tmp")]
    man = json.loads((final / MANIFEST).read_text())
    assert man["schema_version"] == SCHEMA_VERSION and man["version"] == "v1"
    assert man["files"]["a.npy"]["arrays"] == {"shape": [4], "dtype": np.arange(4).dtype.str}
    assert man["created_at"]


def test_object_arrays_and_bad_names_are_refused_on_write(tmp_path):
    with VersionWriter(tmp_path, "v") as w:
        with pytest.raises(TypeError, match="pickle"):
            w.write_array("ids.npy", np.array(["a", 1, None], dtype=object))
        with pytest.raises(TypeError, match="pickle"):
            w.write_arrays("x.npz", {"ok": np.arange(2), "bad": np.array([{}], dtype=object)})
        for name in ("../escape.npy", ".hidden", MANIFEST):
            with pytest.raises(ValueError):
                w.write_array(name, np.arange(2))
        w.write_array("ok.npy", np.arange(2))
        with pytest.raises(ValueError, match="twice"):
            w.write_array("ok.npy", np.arange(2))
    # nothing was committed, so nothing remains
    assert entries(tmp_path) == set()


def test_saved_arrays_load_without_pickle(tmp_path, fitted):
    path = write_version(tmp_path, fitted)
    for f in path.iterdir():
        if f.suffix == ".npy":
            np.load(f, allow_pickle=False)
        elif f.suffix == ".npz":
            with np.load(f, allow_pickle=False) as z:
                for k in z.files:
                    assert z[k].dtype != object


# --- publishing ------------------------------------------------------------------


def test_publish_and_current_version(tmp_path, fitted):
    assert current_version(tmp_path) is None and list_versions(tmp_path) == []
    with pytest.raises(NoModelError) as exc:
        load_bundle(tmp_path)
    assert "encore train" in str(exc.value)
    a = write_version(tmp_path, fitted, version="20240101T000000Z-aaaaaa")
    # written but not published: still nothing to serve
    assert current_version(tmp_path) is None
    publish(tmp_path, a.name)
    assert current_version(tmp_path) == a.name
    assert (tmp_path / CURRENT_POINTER).read_text().strip() == a.name
    b = write_version(tmp_path, fitted, version="20240102T000000Z-bbbbbb")
    assert current_version(tmp_path) == a.name  # a new version does not switch by itself
    publish(tmp_path, b.name)
    assert current_version(tmp_path) == b.name
    assert list_versions(tmp_path) == [a.name, b.name]
    assert not [n for n in entries(tmp_path) if n.startswith(".tmp")]


def test_publish_refuses_incomplete_versions(tmp_path, fitted):
    good = write_version(tmp_path, fitted)
    publish(tmp_path, good.name)
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "items.npy").write_bytes(b"")
    for name in ("half", "missing"):
        with pytest.raises(NoModelError):
            publish(tmp_path, name)
    assert current_version(tmp_path) == good.name
    assert list_versions(tmp_path) == [good.name]


def test_current_pointing_at_a_missing_or_half_written_version(tmp_path, fitted):
    write_version(tmp_path, fitted)
    (tmp_path / CURRENT_POINTER).write_text("gone\n")
    with pytest.raises(NoModelError, match="gone"):
        load_bundle(tmp_path)
    (tmp_path / "half").mkdir()
    (tmp_path / CURRENT_POINTER).write_text("half\n")
    with pytest.raises(CorruptArtifactError, match="half-written"):
        load_bundle(tmp_path)


# --- reading ---------------------------------------------------------------------


def test_round_trip_gives_the_same_top_n(tmp_path, fitted):
    als, m = fitted
    path = write_version(tmp_path, fitted, topn=als.recommend(np.arange(N_C), m, k=5))
    publish(tmp_path, path.name)
    b = load_bundle(tmp_path)
    assert b.version == path.name and b.path == path
    assert b.customers.ids_.tolist() == [f"c{i:03d}" for i in range(N_C)]
    assert b.items.ids_.tolist() == [f"i{i:03d}" for i in range(N_I)]
    assert (b.history != m).nnz == 0
    np.testing.assert_array_equal(b.als.user_factors_, als.user_factors_)
    rows = np.arange(N_C)
    for exclude in (False, True):
        want = als.recommend(rows, m, k=10, exclude_seen=exclude)
        got = b.als.recommend(rows, b.history, k=10, exclude_seen=exclude)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_allclose(got[1], want[1], rtol=1e-6)
    np.testing.assert_array_equal(b.topn_items, als.recommend(rows, m, k=5)[0])
    assert b.catalog.title[3] == "title 3" and b.catalog.price[-1] == 9.0
    assert b.manifest["components"]["als"] and b.manifest["shape"] == {
        "customers": N_C,
        "items": N_I,
    }
    assert b.manifest["config"] == {"note": "test"}


def _unknown_schema(v: Path) -> None:
    edit_manifest(v, lambda m: m.update(schema_version=SCHEMA_VERSION + 1))


def _not_ours(v: Path) -> None:
    edit_manifest(v, lambda m: m.update(format="someone-elses-model"))


def _missing_file(v: Path) -> None:
    (v / "items.npy").unlink()


def _truncated(v: Path) -> None:
    data = (v / "als.npz").read_bytes()
    (v / "als.npz").write_bytes(data[: len(data) // 2])


def _changed_bytes(v: Path) -> None:
    data = bytearray((v / "popularity.npy").read_bytes())
    data[-1] ^= 0xFF  # same size, different content
    (v / "popularity.npy").write_bytes(bytes(data))


def _wrong_shape_in_manifest(v: Path) -> None:
    def fn(m):
        m["files"]["als.npz"]["arrays"]["user_factors"]["shape"][0] += 1

    edit_manifest(v, fn)


def _nan_factors(v: Path) -> None:
    rewrite_npz(v, "als.npz", lambda a: a["user_factors"].__setitem__((5, 0), np.nan))
    reseal(v, "als.npz")


def _inf_popularity(v: Path) -> None:
    pop = np.load(v / "popularity.npy")
    pop[0] = np.inf
    np.save(v / "popularity.npy", pop)
    reseal(v, "popularity.npy")


def _factor_rows_short(v: Path) -> None:
    rewrite_npz(v, "als.npz", lambda a: a.update(user_factors=a["user_factors"][:-1]))
    reseal(v, "als.npz")
    edit_manifest(
        v, lambda m: m["files"]["als.npz"]["arrays"]["user_factors"].update(shape=[N_C - 1, 4])
    )


def _topn_unknown_item(v: Path) -> None:
    rewrite_npz(v, "topn.npz", lambda a: a["items"].__setitem__((0, 0), N_I + 3))
    reseal(v, "topn.npz")


def _manifest_garbage(v: Path) -> None:
    (v / MANIFEST).write_text("{not json")


def _manifest_gone(v: Path) -> None:
    (v / MANIFEST).unlink()


def _pickled_array(v: Path) -> None:
    np.save(v / "items.npy", np.array([f"i{i:03d}" for i in range(N_I)], dtype=object))
    reseal(v, "items.npy")
    edit_manifest(v, lambda m: m["files"]["items.npy"].pop("arrays"))


CORRUPTIONS = {
    "unknown schema version": (_unknown_schema, IncompatibleArtifactError, "schema version"),
    "foreign format": (_not_ours, IncompatibleArtifactError, "not an Encore"),
    "missing file": (_missing_file, CorruptArtifactError, "items.npy is missing"),
    "truncated file": (_truncated, CorruptArtifactError, "truncated"),
    "changed bytes": (_changed_bytes, CorruptArtifactError, "sha256"),
    "wrong shape in manifest": (_wrong_shape_in_manifest, CorruptArtifactError, "shape"),
    "NaN in ALS factors": (_nan_factors, CorruptArtifactError, "NaN"),
    "inf in popularity": (_inf_popularity, CorruptArtifactError, "NaN or infinity"),
    "factor rows != ids": (_factor_rows_short, CorruptArtifactError, "ALS factors"),
    "top-N names unknown items": (_topn_unknown_item, CorruptArtifactError, "unknown items"),
    "manifest not JSON": (_manifest_garbage, CorruptArtifactError, "unreadable manifest"),
    "manifest missing": (_manifest_gone, CorruptArtifactError, "half-written"),
    "pickled array": (_pickled_array, CorruptArtifactError, "items.npy"),
}


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_reader_refuses_a_damaged_version_with_a_named_error(tmp_path, fitted, kind):
    corrupt, error, fragment = CORRUPTIONS[kind]
    als, m = fitted
    path = write_version(tmp_path, fitted, topn=als.recommend(np.arange(N_C), m, k=5))
    publish(tmp_path, path.name)
    load_bundle(tmp_path)  # intact: loads
    corrupt(path)
    with pytest.raises(error) as exc:
        load_bundle(tmp_path)
    assert isinstance(exc.value, ArtifactError)
    assert fragment in str(exc.value)
    assert str(path) in str(exc.value)


def test_hash_check_can_be_skipped_but_sizes_are_always_checked(tmp_path, fitted):
    path = write_version(tmp_path, fitted)
    _changed_bytes(path)
    with pytest.raises(CorruptArtifactError):
        VersionReader(path)
    VersionReader(path, verify_hashes=False)  # same size: passes the cheap check
    _truncated(path)
    with pytest.raises(CorruptArtifactError, match="truncated"):
        load_bundle_dir(path, verify_hashes=False)


# --- housekeeping ----------------------------------------------------------------


def test_prune_never_removes_the_published_version(tmp_path, fitted):
    names = [f"2024010{d}T000000Z-000000" for d in range(1, 6)]
    for n in names:
        write_version(tmp_path, fitted, version=n)
    publish(tmp_path, names[0])  # the oldest is the published one
    removed = prune_versions(tmp_path, keep=2)
    assert removed == names[1:3]
    assert list_versions(tmp_path) == [names[0], names[3], names[4]]
    assert current_version(tmp_path) == names[0]
    assert load_bundle(tmp_path).version == names[0]
    assert prune_versions(tmp_path, keep=1) == [names[3]]
    assert list_versions(tmp_path) == [names[0], names[4]]


def test_prune_keeps_keep_versions_when_nothing_is_published(tmp_path, fitted):
    names = [f"2024010{d}T000000Z-000000" for d in range(1, 4)]
    for n in names:
        write_version(tmp_path, fitted, version=n)
    prune_versions(tmp_path, keep=2)
    assert list_versions(tmp_path) == names[1:]


def test_remove_stale_temporaries_spares_young_ones_and_the_published_version(tmp_path, fitted):
    good = write_version(tmp_path, fitted)
    publish(tmp_path, good.name)
    old_dir = tmp_path / ".tmp-20200101T000000Z-dead00"
    old_dir.mkdir()
    (old_dir / "als.npz").write_bytes(b"partial")
    old_file = tmp_path / ".tmp-current-deadbeef"
    old_file.write_text("x\n")
    young = tmp_path / ".tmp-20991231T000000Z-beef00"
    young.mkdir()
    long_ago = time.time() - 7 * 3600
    for p in (old_dir, old_file):
        os.utime(p, (long_ago, long_ago))
    # the published version itself is old too: it must stay
    os.utime(good, (long_ago, long_ago))
    assert remove_stale_temporaries(tmp_path) == 2
    assert entries(tmp_path) == {good.name, CURRENT_POINTER, young.name}
    assert load_bundle(tmp_path).version == good.name
    assert remove_stale_temporaries(tmp_path / "nowhere") == 0

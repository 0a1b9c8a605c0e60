"""The artifact store: versioned, verified directories under ``models/``.

Layout::

    models/
      current                  # text: name of the published version
      20261124T150102Z-3f9a1c/ # one directory per version
        manifest.json          # schema, created-at, config, data, metrics, file hashes
        *.npy, *.npz, *.json   # arrays saved without pickle

A version is written into a hidden temporary directory beside the others and
renamed into place only when every file is written and hashed; ``current`` is
switched (write a temporary file, then ``os.replace``) only after the caller has
checked the version. A crash at any point leaves the published version as it
was, and a reader never sees a half-written directory.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import secrets
import shutil
import zipfile
import zlib
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

#: Bump when the files or their meaning change; readers refuse other versions.
SCHEMA_VERSION = 1
FORMAT_NAME = "encore-bundle"
CURRENT_POINTER = "current"
MANIFEST = "manifest.json"
_TMP_PREFIX = ".tmp-"


class ArtifactError(RuntimeError):
    """A model version that cannot be served."""


class NoModelError(ArtifactError):
    """No version has been published in this models directory."""


class CorruptArtifactError(ArtifactError):
    """Files are missing, truncated, fail their hash, or hold non-finite numbers."""


class IncompatibleArtifactError(ArtifactError):
    """The version was written with a schema this code does not read."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def new_version_name(now: dt.datetime | None = None) -> str:
    """A sortable, unique name: UTC time plus a random suffix."""
    now = now or dt.datetime.now(dt.UTC)
    return now.strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class VersionWriter:
    """Write one model version atomically.

    Use as a context manager; files go to a temporary directory and
    :meth:`commit` hashes them, writes the manifest and renames the directory
    into place. Leaving the block without committing (or with an exception)
    deletes the temporary directory.
    """

    def __init__(self, models_dir: str | Path, version: str | None = None) -> None:
        self.models_dir = Path(models_dir)
        self.version = version or new_version_name()
        self.tmp_dir = self.models_dir / f"{_TMP_PREFIX}{self.version}"
        self.files: list[str] = []
        self.shapes: dict[str, Any] = {}
        self.committed: Path | None = None

    def __enter__(self) -> VersionWriter:
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.committed is None:
            shutil.rmtree(self.tmp_dir, ignore_errors=True)

    def _path(self, name: str) -> Path:
        if "/" in name or name.startswith(".") or name == MANIFEST:
            raise ValueError(f"bad artifact file name {name!r}")
        if name in self.files:
            raise ValueError(f"artifact {name!r} written twice")
        self.files.append(name)
        return self.tmp_dir / name

    def write_array(self, name: str, array: np.ndarray) -> None:
        """Save one array as ``name`` (``.npy``); object arrays are refused."""
        array = np.asarray(array)
        if array.dtype == object:
            raise TypeError(f"{name}: object arrays would need pickle")
        np.save(self._path(name), array, allow_pickle=False)
        self.shapes[name] = {"shape": list(array.shape), "dtype": array.dtype.str}

    def write_arrays(self, name: str, arrays: Mapping[str, np.ndarray]) -> None:
        """Save several arrays in one ``.npz`` archive."""
        clean = {k: np.asarray(v) for k, v in arrays.items()}
        for k, v in clean.items():
            if v.dtype == object:
                raise TypeError(f"{name}:{k}: object arrays would need pickle")
        with open(self._path(name), "wb") as fh:
            np.savez(fh, **clean)  # type: ignore[arg-type]  # numpy stubs: allow_pickle
        self.shapes[name] = {
            k: {"shape": list(v.shape), "dtype": v.dtype.str} for k, v in clean.items()
        }

    def write_bytes(self, name: str, data: bytes) -> None:
        """Save an opaque file (e.g. a PNG report); hashed like the others."""
        with open(self._path(name), "wb") as fh:
            fh.write(data)

    def write_json(self, name: str, obj: Any) -> None:
        with open(self._path(name), "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=2, sort_keys=True, allow_nan=False)

    def commit(self, manifest: Mapping[str, Any]) -> Path:
        """Hash the files, write ``manifest.json`` and move the version into place."""
        paths = [self.tmp_dir / name for name in self.files]
        # The files are hashed, and later flushed to disk, side by side:
        # hashlib and fsync release the interpreter, and a large bundle has
        # hundreds of megabytes to hash.
        workers = max(1, min(4, os.cpu_count() or 1, len(paths)))
        with ThreadPoolExecutor(workers, thread_name_prefix="encore-commit") as pool:
            digests = dict(zip(self.files, pool.map(sha256_file, paths), strict=True))
            full = self._manifest(manifest, digests)
            with open(self.tmp_dir / MANIFEST, "w", encoding="utf-8") as fh:
                json.dump(full, fh, indent=2, sort_keys=True, allow_nan=False)
                fh.flush()
                os.fsync(fh.fileno())
            list(pool.map(_fsync_file, paths))
        _fsync_dir(self.tmp_dir)
        final = self.models_dir / self.version
        os.rename(self.tmp_dir, final)  # atomic on one filesystem
        _fsync_dir(self.models_dir)
        self.committed = final
        return final

    def _manifest(self, manifest: Mapping[str, Any], digests: Mapping[str, str]) -> dict[str, Any]:
        full = dict(manifest)
        full.update(
            {
                "format": FORMAT_NAME,
                "schema_version": SCHEMA_VERSION,
                "version": self.version,
                "created_at": full.get("created_at")
                or dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "files": {
                    name: {
                        "sha256": digests[name],
                        "bytes": (self.tmp_dir / name).stat().st_size,
                        **({"arrays": self.shapes[name]} if name in self.shapes else {}),
                    }
                    for name in self.files
                },
            }
        )
        return full


def publish(models_dir: str | Path, version: str) -> None:
    """Point ``current`` at ``version`` atomically."""
    models_dir = Path(models_dir)
    if not (models_dir / version / MANIFEST).is_file():
        raise NoModelError(f"{models_dir / version}: not a complete model version")
    tmp = models_dir / f"{_TMP_PREFIX}{CURRENT_POINTER}-{secrets.token_hex(4)}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(version + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, models_dir / CURRENT_POINTER)
    _fsync_dir(models_dir)


def current_version(models_dir: str | Path) -> str | None:
    """The published version's name, or None if nothing is published."""
    pointer = Path(models_dir) / CURRENT_POINTER
    try:
        name = pointer.read_text(encoding="utf-8").strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return name or None


def list_versions(models_dir: str | Path) -> list[str]:
    """Complete versions (with a manifest), oldest first."""
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        return []
    return sorted(
        p.name
        for p in models_dir.iterdir()
        if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST).is_file()
    )


def resolve_version_dir(models_dir: str | Path, version: str | None = None) -> Path:
    """Directory of ``version`` or of the published one.

    Raises
    ------
    NoModelError
        If nothing is published (with a hint on how to train one).
    """
    models_dir = Path(models_dir)
    name = version or current_version(models_dir)
    if name is None:
        raise NoModelError(
            f"no model is published in {models_dir}: train one with "
            f"`encore train --transactions FILE --models-dir {models_dir}` "
            f"(or `encore demo`)"
        )
    path = models_dir / name
    if not path.is_dir():
        raise NoModelError(f"{models_dir}: published version {name!r} does not exist")
    return path


def read_manifest(version_dir: str | Path) -> dict[str, Any]:
    """Read and check a version's manifest (format and schema version)."""
    path = Path(version_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CorruptArtifactError(f"{version_dir}: no {MANIFEST} (half-written?)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptArtifactError(f"{path}: unreadable manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise IncompatibleArtifactError(f"{path}: not an Encore model manifest")
    schema = manifest.get("schema_version")
    if schema != SCHEMA_VERSION:
        raise IncompatibleArtifactError(
            f"{path}: schema version {schema!r}; this code reads version {SCHEMA_VERSION}"
        )
    if not isinstance(manifest.get("files"), dict):
        raise CorruptArtifactError(f"{path}: manifest lists no files")
    return manifest


class VersionReader:
    """Verified access to one version's files."""

    def __init__(self, version_dir: str | Path, *, verify_hashes: bool = True) -> None:
        self.path = Path(version_dir)
        self.manifest = read_manifest(self.path)
        self.files: dict[str, Any] = self.manifest["files"]
        for name, info in self.files.items():
            fpath = self.path / name
            if not fpath.is_file():
                raise CorruptArtifactError(f"{self.path}: file {name} is missing")
            if fpath.stat().st_size != info.get("bytes"):
                raise CorruptArtifactError(
                    f"{self.path}: file {name} has {fpath.stat().st_size} bytes, "
                    f"manifest says {info.get('bytes')} (truncated or changed)"
                )
            if verify_hashes and sha256_file(fpath) != info.get("sha256"):
                raise CorruptArtifactError(f"{self.path}: file {name} fails its sha256 check")

    def has(self, name: str) -> bool:
        return name in self.files

    def _require(self, name: str) -> Path:
        if name not in self.files:
            raise CorruptArtifactError(f"{self.path}: manifest lists no file {name}")
        return self.path / name

    def array(self, name: str, *, finite: bool = False, mmap: bool = False) -> np.ndarray:
        try:
            arr = np.load(self._require(name), allow_pickle=False, mmap_mode="r" if mmap else None)
        except (ValueError, OSError, EOFError) as exc:
            raise CorruptArtifactError(f"{self.path}: cannot read {name} ({exc})") from None
        _check_shape(self.path, name, arr, self.files[name].get("arrays"))
        if finite and arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise CorruptArtifactError(f"{self.path}: {name} contains NaN or infinity")
        return arr

    def arrays(self, name: str, *, finite: bool = False) -> dict[str, np.ndarray]:
        try:
            with np.load(self._require(name), allow_pickle=False) as npz:
                out = {k: npz[k] for k in npz.files}
        except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
            raise CorruptArtifactError(f"{self.path}: cannot read {name} ({exc})") from None
        expected = self.files[name].get("arrays") or {}
        for k, arr in out.items():
            _check_shape(self.path, f"{name}:{k}", arr, expected.get(k))
            if finite and arr.dtype.kind == "f" and not np.isfinite(arr).all():
                raise CorruptArtifactError(f"{self.path}: {name}:{k} contains NaN or infinity")
        return out

    def text(self, name: str) -> str:
        try:
            return self._require(name).read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise CorruptArtifactError(f"{self.path}: cannot read {name} ({exc})") from None

    def json(self, name: str) -> Any:
        try:
            return json.loads(self._require(name).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CorruptArtifactError(f"{self.path}: cannot read {name} ({exc})") from None


def _check_shape(path: Path, name: str, arr: np.ndarray, expected: Any) -> None:
    if not expected:
        return
    if list(arr.shape) != list(expected["shape"]) or arr.dtype.str != expected["dtype"]:
        raise CorruptArtifactError(
            f"{path}: {name} has shape {list(arr.shape)} {arr.dtype.str}, "
            f"manifest says {expected['shape']} {expected['dtype']}"
        )


def remove_stale_temporaries(models_dir: str | Path, older_than_s: float = 6 * 3600) -> int:
    """Delete temporaries left by crashed runs (older than ``older_than_s``); returns how many.

    Without the store's lock (:mod:`recommender.store.lock`), younger ones may
    belong to a run still writing, so they stay; a run that holds the lock
    passes ``older_than_s=0``.
    """
    import time

    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        return 0
    n = 0
    now = time.time()
    for p in models_dir.iterdir():
        try:
            age = now - p.stat().st_mtime
        except FileNotFoundError:
            continue
        if p.name.startswith(_TMP_PREFIX) and age >= older_than_s:
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            n += 1
    return n


HISTORY_FILE = "history.json"
#: Entries kept in the publish history (a rollback needs only the last few).
HISTORY_LIMIT = 100


def publish_history(models_dir: str | Path) -> list[dict[str, Any]]:
    """Every switch of ``current`` recorded in the store, oldest first."""
    try:
        data = json.loads((Path(models_dir) / HISTORY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    entries = data.get("published") if isinstance(data, dict) else None
    return [e for e in entries or [] if isinstance(e, dict) and isinstance(e.get("version"), str)]


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f"{_TMP_PREFIX}{path.name}-{secrets.token_hex(4)}")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def record_publish(models_dir: str | Path, version: str, how: str, *, forced: bool = False) -> None:
    """Append ``version`` to the publish history (written atomically)."""
    entries = publish_history(models_dir)
    entries.append(
        {
            "version": version,
            "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "how": how,
            **({"forced": True} if forced else {}),
        }
    )
    _write_atomically(
        Path(models_dir) / HISTORY_FILE,
        json.dumps({"published": entries[-HISTORY_LIMIT:]}, indent=2) + "\n",
    )


def publish_version(
    models_dir: str | Path, version: str, how: str, *, forced: bool = False
) -> None:
    """Point ``current`` at ``version`` and record it in the publish history."""
    publish(models_dir, version)
    record_publish(models_dir, version, how, forced=forced)


def rollback_target(models_dir: str | Path) -> str | None:
    """The version published most recently before the current one that still exists.

    Rolling back twice returns to where one started, as ``cd -`` does.
    """
    current = current_version(models_dir)
    present = set(list_versions(models_dir))
    for entry in reversed(publish_history(models_dir)):
        v = entry["version"]
        if v != current and v in present:
            return v
    return None


def prune_versions(models_dir: str | Path, keep: int = 5) -> list[str]:
    """Delete all but the newest ``keep`` versions; returns the names deleted.

    The published version and the rollback target (the one published before
    it) are never deleted, whatever their age.
    """
    if keep < 1:
        raise ValueError("keep must be at least 1")
    protected = {current_version(models_dir), rollback_target(models_dir)}
    versions = list_versions(models_dir)
    removed = [v for v in versions[: max(0, len(versions) - keep)] if v not in protected]
    for v in removed:
        shutil.rmtree(Path(models_dir) / v, ignore_errors=True)
    return removed


def version_summaries(models_dir: str | Path) -> list[dict[str, Any]]:
    """One summary per version, oldest first: what ``encore models list`` shows.

    Each holds ``version``, ``created_at``, ``as_of``, ``data`` (the
    fingerprint), ``metrics``, ``gate`` (the promotion gate's status, or None
    for a version written before there was one), ``current``,
    ``rollback_target``, and ``damaged`` (why the version cannot be read, or
    None; file sizes are checked, not hashes).
    """
    models_dir = Path(models_dir)
    current = current_version(models_dir)
    previous = rollback_target(models_dir)
    names = set(list_versions(models_dir))
    if models_dir.is_dir():  # a directory without a readable manifest is listed too
        names |= {p.name for p in models_dir.iterdir() if p.is_dir() and p.name[0] != "."}
    out = []
    for name in sorted(names):
        info: dict[str, Any] = {
            "version": name,
            "current": name == current,
            "rollback_target": name == previous,
            "damaged": None,
        }
        try:
            m = VersionReader(models_dir / name, verify_hashes=False).manifest
        except ArtifactError as exc:
            info["damaged"] = str(exc)
            m = {}
        info.update(
            created_at=m.get("created_at"),
            as_of=m.get("as_of"),
            data=m.get("data") or {},
            metrics=m.get("metrics") or {},
            gate=(m.get("gate") or {}).get("status"),
        )
        out.append(info)
    return out

"""The model store: which version is served, and swapping in new ones safely.

A new version is loaded and verified in a background thread, off the event
loop; only a version that passes every check replaces the served answerer, by
one reference assignment (atomic in CPython). Requests in flight keep the
answerer they started with. A corrupt, half-written or incompatible version is
refused, logged, and the old one keeps serving (as TF Serving and Triton do).

When nothing is served yet (start-up) and the published version cannot be
loaded, the newest good version serves instead, and the store says so
(``fallback_from``, ``note``): a damaged ``current`` must not leave a shop
without recommendations while good versions sit beside it. A version refused
once is retried when ``current`` has pointed elsewhere since (a rollback to a
version served before always loads).
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from recommender.answers import Answerer
from recommender.store.artifacts import current_version, list_versions, read_manifest
from recommender.store.bundle import load_bundle
from serving.encoding import ItemJson
from serving.settings import ServingSettings

log = logging.getLogger("encore.serving")


@dataclass
class LoadEvent:
    """One attempt to load a version."""

    version: str | None
    ok: bool
    message: str
    at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class Served:
    """One loaded version as the routes use it, swapped in as one reference."""

    answerer: Answerer
    items_json: ItemJson
    """Its items' JSON, written once per version (:mod:`serving.encoding`)."""


def warm_up(answerer: Answerer) -> None:
    """Ask the new version one question of each kind before it serves.

    What a version builds on first use (the item factors' norms behind a
    pick's reason, the Gram matrix of the fold-in) is then built here, in the
    loading thread, and not by the first requests after a swap (measured: the
    first known customer and the first recent-items question took 40-100 ms
    each on 100,000 items, against 0.1-0.5 ms after). A version that cannot
    answer them fails here and is refused like any broken version.
    """
    bundle = answerer.bundle
    customer = bundle.customers.id(0) if len(bundle.customers) else None
    answerer.for_customer(customer, 10)
    if bundle.n_items:
        answerer.for_recent([bundle.items.id(0)], 10, customer_id=customer)


def settle_objects() -> None:
    """Collect garbage once, then keep the objects alive now out of later collections.

    Python's full (generation 2) collection walks every container object: with
    FastAPI, pandas and a loaded version that is ~120,000 objects and ~30 ms
    (quiet machine; 70-170 ms on a busy one) in which a worker answers nothing.
    Under the serving bench a worker ran about a dozen of them a minute. Objects
    alive right after a version loads are the libraries and
    the version itself, so ``gc.freeze`` moves them out of the collector's
    sight (Instagram's ``gc.freeze`` recipe) and later collections walk only
    what requests allocate. ``unfreeze`` first, so that a replaced version's
    own cycles are collected here rather than kept for good; that one collection
    is the worker's only pause per version.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class ModelStore:
    """Holds the served :class:`~recommender.answers.Answerer` and reloads it when
    ``current`` changes."""

    def __init__(self, settings: ServingSettings) -> None:
        self.settings = settings
        self._served: Served | None = None
        self._lock = threading.Lock()  # one load at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._refused: set[str] = set()
        self._last_wanted: str | None = None
        self.fallback_from: str | None = None
        """The published version, while an older one serves in its place."""
        self.note: str | None = None
        self.unavailable: str | None = None
        """Why nothing is served (None while something is)."""
        self.events: list[LoadEvent] = []
        self.reloads_ok = 0
        self.reloads_failed = 0

    @property
    def served(self) -> Served | None:
        """The served version (a request keeps the one it started with)."""
        return self._served

    @property
    def answerer(self) -> Answerer | None:
        s = self._served
        return s.answerer if s is not None else None

    @property
    def version(self) -> str | None:
        s = self._served
        return s.answerer.bundle.version if s is not None else None

    def _record(self, event: LoadEvent) -> None:
        self.events = (self.events + [event])[-20:]

    def refresh(self, *, force: bool = False) -> LoadEvent:
        """Load the published version if it is not the one served.

        A version that failed its checks is not retried until ``current``
        points elsewhere, unless ``force``. When nothing is served and the
        published version fails, the newest good version is loaded instead.
        """
        with self._lock:
            models_dir = self.settings.models_dir
            try:
                wanted = current_version(models_dir)
            except OSError as exc:
                return LoadEvent(None, False, f"cannot read the models directory: {exc}")
            if wanted != self._last_wanted:
                self._refused.clear()  # current moved: every version gets a new chance
                self._last_wanted = wanted
            if wanted is None:
                msg = f"no model is published in {models_dir}"
                if self.answerer is None:
                    self.unavailable = (
                        f"{msg}: train one with `encore train --transactions FILE "
                        f"--models-dir {models_dir}` (or `encore demo`); the server picks it up "
                        "automatically"
                    )
                return LoadEvent(None, self.answerer is not None, msg)
            if wanted == self.version and not force:
                return LoadEvent(wanted, True, "already serving this version")
            if wanted in self._refused and not force:
                return LoadEvent(wanted, False, "refused earlier; still serving the old version")
            ev = self._load(wanted)
            if ev.ok:
                self.fallback_from = self.note = self.unavailable = None
            elif self.answerer is None:
                ev = self._fall_back(wanted, ev)
            elif self.fallback_from is not None:
                self.fallback_from = wanted  # still standing in, now for this one
            return ev

    def _load(self, version: str, *, served_as: str = "serving") -> LoadEvent:
        t0 = time.perf_counter()
        try:
            bundle = load_bundle(
                self.settings.models_dir, version, verify_hashes=self.settings.verify_hashes
            )
            answerer = Answerer(bundle, due_days=self.settings.due_probability_horizon_days)
            served = Served(answerer, ItemJson(bundle))
            warm_up(answerer)
        except Exception as exc:
            # Whatever stops a version from loading (named artifact errors, but
            # also e.g. zipfile.BadZipFile from damaged bytes when hashes are not
            # verified) refuses that version; the served one stays.
            self._refused.add(version)
            self.reloads_failed += 1
            ev = LoadEvent(version, False, f"refused version {version}: {exc}")
            log.error("%s; still serving %s", ev.message, self.version)
            self._record(ev)
            return ev
        self._served = served  # the swap: requests in flight keep theirs
        if self.settings.freeze_gc:
            settle_objects()
        self._refused.discard(version)
        self.reloads_ok += 1
        ev = LoadEvent(
            version,
            True,
            f"{served_as} version {version} (loaded in {time.perf_counter() - t0:.2f}s)",
        )
        log.info(ev.message)
        self._record(ev)
        return ev

    def _fall_back(self, wanted: str, failed: LoadEvent) -> LoadEvent:
        """Serve the newest version that loads, other than ``wanted`` and versions
        the promotion gate held back."""
        models_dir = self.settings.models_dir
        tried = 0
        for version in reversed(list_versions(models_dir)):
            if version == wanted or version in self._refused:
                continue
            try:
                held = (read_manifest(models_dir / version).get("gate") or {}).get("status")
            except Exception:  # an unreadable manifest: that version is damaged too
                continue
            if held == "held back":
                continue
            tried += 1
            ev = self._load(version, served_as="falling back to")
            if ev.ok:
                self.fallback_from = wanted
                self.note = (
                    f"the published version {wanted} is damaged ({failed.message}); "
                    f"serving {version}, the newest good version, until a good one is published "
                    "(encore models list; encore models promote VERSION)"
                )
                self.unavailable = None
                log.warning(self.note)
                return LoadEvent(version, True, self.note)
        self.unavailable = (
            f"no model can be served from {models_dir}: the published version {wanted} is "
            f"damaged ({failed.message})"
            + (
                f", and so are the {tried} other version(s) tried"
                if tried
                else ", and there is no other good version"
            )
            + "; publish a good one (encore train, or encore models promote VERSION)"
        )
        log.error(self.unavailable)
        return failed

    def start(self) -> None:
        """Load now, then poll in the background every ``reload_interval_s``."""
        self.refresh()
        interval = self.settings.reload_interval_s
        if interval > 0:
            self._thread = threading.Thread(
                target=self._poll, args=(interval,), name="encore-reload", daemon=True
            )
            self._thread.start()

    def _poll(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.refresh()
            except Exception:  # a poll must never kill the thread
                log.exception("model reload check failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def status(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "fallback_from": self.fallback_from,
            "note": self.note,
            "reloads_ok": self.reloads_ok,
            "reloads_failed": self.reloads_failed,
            "last_events": [e.__dict__ for e in self.events[-5:]],
        }

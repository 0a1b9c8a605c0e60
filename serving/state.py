"""The model store: which version is served, and swapping in new ones safely.

A new version is loaded and verified in a background thread, off the event
loop; only a version that passes every check replaces the served answerer, by
one reference assignment (atomic in CPython). Requests in flight keep the
answerer they started with. A corrupt, half-written or incompatible version is
refused, logged, and the old one keeps serving (as TF Serving and Triton do).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from recommender.answers import Answerer
from recommender.store.artifacts import current_version
from recommender.store.bundle import load_bundle
from serving.settings import ServingSettings

log = logging.getLogger("encore.serving")


@dataclass
class LoadEvent:
    """One attempt to load a version."""

    version: str | None
    ok: bool
    message: str
    at: float = field(default_factory=time.time)


class ModelStore:
    """Holds the served :class:`~recommender.answers.Answerer` and reloads it when
    ``current`` changes."""

    def __init__(self, settings: ServingSettings) -> None:
        self.settings = settings
        self._answerer: Answerer | None = None
        self._lock = threading.Lock()  # one load at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._refused: set[str] = set()
        self.events: list[LoadEvent] = []
        self.reloads_ok = 0
        self.reloads_failed = 0

    @property
    def answerer(self) -> Answerer | None:
        return self._answerer

    @property
    def version(self) -> str | None:
        a = self._answerer
        return a.bundle.version if a is not None else None

    def _record(self, event: LoadEvent) -> None:
        self.events = (self.events + [event])[-20:]

    def refresh(self, *, force: bool = False) -> LoadEvent:
        """Load the published version if it is not the one served.

        A version that failed its checks is not retried until ``current``
        points elsewhere, unless ``force``.
        """
        with self._lock:
            try:
                wanted = current_version(self.settings.models_dir)
            except OSError as exc:
                return LoadEvent(None, False, f"cannot read the models directory: {exc}")
            if wanted is None:
                msg = f"no model is published in {self.settings.models_dir}"
                return LoadEvent(None, self._answerer is not None, msg)
            if wanted == self.version and not force:
                return LoadEvent(wanted, True, "already serving this version")
            if wanted in self._refused and not force:
                return LoadEvent(wanted, False, "refused earlier; still serving the old version")
            t0 = time.perf_counter()
            try:
                bundle = load_bundle(
                    self.settings.models_dir, wanted, verify_hashes=self.settings.verify_hashes
                )
                answerer = Answerer(bundle, due_days=self.settings.due_probability_horizon_days)
            except Exception as exc:
                # Whatever stops a version from loading (named artifact errors, but
                # also e.g. zipfile.BadZipFile from damaged bytes when hashes are not
                # verified) refuses that version; the served one stays.
                self._refused.add(wanted)
                self.reloads_failed += 1
                ev = LoadEvent(wanted, False, f"refused version {wanted}: {exc}")
                log.error("%s; still serving %s", ev.message, self.version)
                self._record(ev)
                return ev
            self._answerer = answerer  # the swap: requests in flight keep theirs
            self._refused.discard(wanted)
            self.reloads_ok += 1
            ev = LoadEvent(
                wanted,
                True,
                f"serving version {wanted} (loaded in {time.perf_counter() - t0:.2f}s)",
            )
            log.info(ev.message)
            self._record(ev)
            return ev

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
            "reloads_ok": self.reloads_ok,
            "reloads_failed": self.reloads_failed,
            "last_events": [e.__dict__ for e in self.events[-5:]],
        }

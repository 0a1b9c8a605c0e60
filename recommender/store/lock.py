"""One training run per store at a time: an ``flock`` on ``models/.lock``.

The lock is an advisory ``fcntl.flock`` on a file in the models directory, so
the kernel releases it when the holding process ends, however it ends (a
``kill -9`` included): a lock file left by a dead run never blocks the next
one. The holder writes its pid, host and start time into the file, so a run
that finds the store locked can say by whom.

Under the lock no other run can be writing, so the holder may delete every
``.tmp-*`` leftover of a killed run at once.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import Any

LOCK_FILE = ".lock"


class StoreLockedError(RuntimeError):
    """Another run holds the store's lock."""

    def __init__(self, message: str, holder: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.holder = holder or {}


def read_holder(models_dir: str | Path) -> dict[str, Any]:
    """What the lock file says about its (last) holder; empty if unreadable."""
    try:
        data = json.loads((Path(models_dir) / LOCK_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def describe_holder(holder: dict[str, Any]) -> str:
    if not holder:
        return "another run (no details in the lock file)"
    return (
        f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, "
        f"started {holder.get('started_at', '?')}"
        + (f" ({holder['what']})" if holder.get("what") else "")
    )


class StoreLock:
    """Hold the store's lock for a block; wait up to ``wait_s`` seconds for it.

    Raises :class:`StoreLockedError` (naming the holder) when it is not free
    in time.
    """

    def __init__(
        self, models_dir: str | Path, *, wait_s: float = 0.0, what: str = "", poll_s: float = 0.2
    ) -> None:
        self.models_dir = Path(models_dir)
        self.wait_s = max(0.0, float(wait_s))
        self.what = what
        self.poll_s = poll_s
        self._fd: int | None = None

    @property
    def path(self) -> Path:
        return self.models_dir / LOCK_FILE

    def acquire(self) -> None:
        self.models_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    holder = read_holder(self.models_dir)
                    waited = f" after waiting {self.wait_s:g}s" if self.wait_s else ""
                    raise StoreLockedError(
                        f"{self.models_dir} is locked by {describe_holder(holder)}{waited}; "
                        "two runs never train into one store at once (--wait SECONDS to wait "
                        "for it)",
                        holder,
                    ) from None
                time.sleep(self.poll_s)
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "what": self.what,
        }
        # Rewritten in place (the lock is on this very inode, so no rename).
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
        except OSError:
            pass
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> StoreLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

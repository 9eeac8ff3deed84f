"""A lease on a stage's key in the store: the run holding it computes; another run asking for the same key waits
for the artifact (or for the lease to expire, when its holder died) instead of computing it a second time into
the same checkpoint folder.

Object stores have no atomic create-if-absent, so a run writes its lease, lets it settle and reads it back: if
another run's lease is there instead, it backs off. Two runs that still race both compute the same bytes (the
stages are deterministic and every write goes to a unique temporary name first): the worst case costs time,
never a result. A holder renews its lease while it works; a killed holder's lease expires after `ttl` seconds.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid

from dynslice.store import ArtifactStore

log = logging.getLogger(__name__)

TTL_ENV = "DYNSLICE_LEASE_SECONDS"


def default_ttl() -> float:
    return float(os.environ.get(TTL_ENV, "120"))


class Lease:
    def __init__(self, store: ArtifactStore, stage: str, key: str, ttl: float | None = None):
        self.store, self.ttl = store, ttl or default_ttl()
        self.path = store.path("leases", stage, f"{key}.json")
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def holder(self) -> dict | None:
        """The live lease of another run, if any (an expired or unreadable lease counts as none)."""
        try:
            lease = json.loads(self.store.fs.cat_file(self.path))
            live = float(lease["expires"]) > time.time()
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None
        return lease if live and lease.get("owner") != self.owner else None

    def _write(self) -> None:
        tmp = f"{self.path}.{uuid.uuid4().hex}.tmp"
        body = {"owner": self.owner, "expires": time.time() + self.ttl}
        self.store.fs.pipe_file(tmp, json.dumps(body).encode())
        self.store.fs.mv(tmp, self.path)

    def acquire(self, settle: float = 0.5) -> bool:
        """Take the lease unless another run holds a live one; True when this run holds it."""
        if self.holder() is not None:
            return False
        self._write()
        time.sleep(settle)  # a racing run's write lands in this window; whoever wrote last holds the lease
        try:
            mine = json.loads(self.store.fs.cat_file(self.path)).get("owner") == self.owner
        except (FileNotFoundError, ValueError):
            mine = False
        if mine:
            self._renewer = threading.Thread(target=self._renew, name="dynslice-lease", daemon=True)
            self._renewer.start()
        return mine

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            try:
                self._write()
            except OSError as exc:  # a missed renewal only shortens the lease; the next one may work
                log.warning("cannot renew the lease %s: %s", self.path, exc)

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        try:
            lease = json.loads(self.store.fs.cat_file(self.path))
            if lease.get("owner") == self.owner:
                self.store.fs.rm(self.path)
        except (FileNotFoundError, ValueError):
            pass

"""What every task shares: opening the store, the retry rule, how a cache hit is reported, and the bridge that
sends the library's own log lines ("cache hit", "resuming at layer 12") to the run they belong to."""

from __future__ import annotations

import logging

from prefect.context import get_run_context
from prefect.exceptions import MissingContextError
from prefect.logging.handlers import APILogHandler
from prefect.states import Completed

from dynslice.store import ArtifactRef, ArtifactStore
from dynslice.storeaccess import is_transient

RETRY = {"retries": 3, "retry_delay_seconds": [2, 10, 30], "retry_jitter_factor": 0.2}


def io_errors_only(task, task_run, state) -> bool:
    """Retry transient storage and network trouble (connection errors, timeouts, throttling) with backoff; bad
    input, a missing bucket or denied access fail at once, since trying again cannot fix them."""
    exc = state.result(raise_on_failure=False)
    return isinstance(exc, BaseException) and is_transient(exc)


def store_spec(uri: str, block: str | None = None) -> dict:
    """What tasks receive to open the store: its URI and, optionally, the name of a Prefect Secret block."""
    return {"uri": uri, "block": block}


def open_store(spec: dict) -> ArtifactStore:
    """The artifact store; fsspec storage options (endpoint, credentials) may come from a Prefect Secret
    block holding JSON, so they never appear in a configuration file, a log or an artifact."""
    options = None
    if spec.get("block"):
        from prefect.blocks.system import Secret

        options = Secret.load(spec["block"]).get()
    return ArtifactStore(spec["uri"], storage_options=options)


def reported(ref: ArtifactRef):
    """The task's JSON result; a store hit shows as `Cached` in the Prefect UI."""
    data = ref.to_dict()
    return Completed(data=data, name="Cached", message=f"store hit {ref.key[:12]}") if ref.cached else data


class _LibraryLogs(APILogHandler):
    """The `dynslice` logger's records, sent to the flow or task run they were emitted in (records outside a
    run stay with the other handlers; nothing is sent twice when PREFECT_LOGGING_EXTRA_LOGGERS names dynslice)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            get_run_context()
        except MissingContextError:
            return
        if any(isinstance(h, APILogHandler) and h is not self for h in logging.getLogger("dynslice").handlers):
            return
        super().emit(record)


def _bridge_library_logs() -> None:
    library = logging.getLogger("dynslice")
    if not any(isinstance(h, _LibraryLogs) for h in library.handlers):
        library.addHandler(_LibraryLogs())
    if library.level == logging.NOTSET:
        library.setLevel(logging.INFO)


_bridge_library_logs()

"""What every task shares: opening the store, the retry rule, and how a cache hit is reported."""

from __future__ import annotations

from prefect.states import Completed

from dynslice.store import ArtifactRef, ArtifactStore

# transient storage/network trouble is retried with backoff; bad input (DynsliceError, a missing local
# file) fails at once, since trying again cannot fix it
_PERMANENT = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)
RETRY = {"retries": 3, "retry_delay_seconds": [2, 10, 30], "retry_jitter_factor": 0.2}


def io_errors_only(task, task_run, state) -> bool:
    exc = state.result(raise_on_failure=False)
    return isinstance(exc, (OSError, TimeoutError)) and not isinstance(exc, _PERMANENT)


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

"""What every task shares: finding and opening the store, the retry rule, how a cache hit is reported, and the
bridge that sends the library's own log lines ("cache hit", "resuming at layer 12") to the run they belong to."""

from __future__ import annotations

import logging
from pathlib import Path

from prefect.context import get_run_context
from prefect.exceptions import MissingContextError
from prefect.logging.handlers import APILogHandler
from prefect.states import Completed

from dynslice.config import STORE_DEFAULT
from dynslice.errors import ConfigError
from dynslice.store import ArtifactRef, ArtifactStore
from dynslice.storeaccess import is_transient

# the team's store, for runs whose configuration leaves `store` (and `store_block`) at the defaults
STORE_VARIABLE = "dynslice-store"
STORE_BLOCK_VARIABLE = "dynslice-store-block"

RETRY = {"retries": 3, "retry_delay_seconds": [2, 10, 30], "retry_jitter_factor": 0.2}


def io_errors_only(task, task_run, state) -> bool:
    """Retry transient storage and network trouble (connection errors, timeouts, throttling) with backoff; bad
    input, a missing bucket or denied access fail at once, since trying again cannot fix them. Nor does a stage
    that ran past its time limit (config.timeouts): a second try would take as long."""
    from prefect.task_engine import TaskRunTimeoutError

    exc = state.result(raise_on_failure=False)
    return isinstance(exc, BaseException) and not isinstance(exc, TaskRunTimeoutError) and is_transient(exc)


def store_spec(uri: str, block: str | None = None) -> dict:
    """What tasks receive to open the store: its URI and, optionally, the name of a Prefect block."""
    return {"uri": uri, "block": block}


def team_store(uri: str, block: str | None = None) -> dict:
    """The store a run writes to. A configuration that leaves `store` at its default (./dynslice-store) gets the
    team's store when the Prefect Variable `dynslice-store` names one (and then the credentials block the Variable
    `dynslice-store-block` names, unless `store_block` is set): a scheduled or UI-triggered run writes to the team
    bucket, not into the working directory of whichever worker took it. A deployment's run refuses a relative
    folder, which would land in the worker's temporary working directory and be lost."""
    from prefect.runtime import deployment
    from prefect.variables import Variable

    if uri == STORE_DEFAULT:
        named = Variable.get(STORE_VARIABLE, default=None)
        if named:
            uri, block = str(named), block or Variable.get(STORE_BLOCK_VARIABLE, default=None)
    if deployment.id and "://" not in uri and not Path(uri).expanduser().is_absolute():
        raise ConfigError(f"store {uri!r} is a folder relative to the worker's working directory: name the team "
                          f"store with `prefect variable set {STORE_VARIABLE} s3://<bucket>/<prefix>` (or give "
                          f"config.store an s3:// URI or an absolute path)")
    return store_spec(uri, block)


def storage_options(block: str) -> dict:
    """fsspec options from a Prefect block, so credentials never appear in a configuration, a log or an artifact:
    `aws-credentials/<name>` or `minio-credentials/<name>` (prefect-aws), or a Secret block (`<name>` or
    `secret/<name>`) whose JSON value holds the options (endpoint_url, key, secret, ...)."""
    kind, _, name = block.rpartition("/")
    if kind in ("", "secret"):
        from prefect.blocks.system import Secret

        return Secret.load(name).get()
    if kind not in ("aws-credentials", "minio-credentials"):
        raise ConfigError(f"store_block {block!r}: use aws-credentials/<name>, minio-credentials/<name> or the name "
                          f"of a Secret block")
    from prefect_aws import AwsCredentials, MinIOCredentials

    creds = (AwsCredentials if kind == "aws-credentials" else MinIOCredentials).load(name)
    # the block's own session resolves profiles and assumed roles; s3fs gets the resulting keys
    keys = creds.get_boto3_session().get_credentials().get_frozen_credentials()
    client = creds.aws_client_parameters
    options = {"key": keys.access_key, "secret": keys.secret_key, "token": keys.token, "use_ssl": client.use_ssl,
               "endpoint_url": client.endpoint_url}
    if creds.region_name:
        options["client_kwargs"] = {"region_name": creds.region_name}
    return {k: v for k, v in options.items() if v is not None}


def open_store(spec: dict) -> ArtifactStore:
    """The artifact store, with storage options from the spec's block when it names one (else fsspec's own
    defaults: for s3://, the worker's AWS_* environment)."""
    options = storage_options(spec["block"]) if spec.get("block") else None
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


class _ThreadTimeoutNotice(logging.Filter):
    """Prefect warns, on every task run with a time limit that runs in a worker thread, that the limit cannot
    interrupt a blocking call. The stages are Python loops over layers and batches, so a limit takes effect between
    two of their steps: the warning on every run would only alarm."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Timeout of %s seconds configured for this task, but the task is "
                                              "running in a worker thread")


def _bridge_library_logs() -> None:
    library = logging.getLogger("dynslice")
    if not any(isinstance(h, _LibraryLogs) for h in library.handlers):
        library.addHandler(_LibraryLogs())
    if library.level == logging.NOTSET:
        library.setLevel(logging.INFO)


_bridge_library_logs()
if not any(isinstance(f, _ThreadTimeoutNotice) for f in logging.getLogger("prefect.task_runs").filters):
    logging.getLogger("prefect.task_runs").addFilter(_ThreadTimeoutNotice())

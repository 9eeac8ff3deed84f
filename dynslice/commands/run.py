"""`dynslice run compress|sweep`: run a flow (Prefect's temporary local server if none is configured)."""

from __future__ import annotations

import argparse
import os

from dynslice.commands import positive_int


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="run the compress or sweep flow",
                       description="Run a Prefect flow. Without PREFECT_API_URL, Prefect starts a temporary local "
                                   "server for the run; set it to use your team's server.")
    p.add_argument("flow", choices=["compress", "sweep"])
    p.add_argument("--config", help="YAML configuration (a local path or fsspec URI); defaults otherwise")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override one value, e.g. --set plan.target=0.3 (repeatable)")
    p.add_argument("--store", help="shortcut for --set store=URI")
    p.add_argument("--workers", type=positive_int, help="sweep: slicing runs at a time on a local Dask cluster "
                                                        "(shortcut for --set runner=dask --set workers=N)")
    p.set_defaults(func=run)


def preflight(uri: str) -> None:
    """The store is reachable and writable, or one error line saying which store and why."""
    from dynslice.errors import StoreError
    from dynslice.store import ArtifactStore
    from dynslice.storeaccess import is_transient

    store = ArtifactStore(uri)
    try:
        store.check_access()
    except StoreError:
        raise
    except Exception as exc:  # check_access lets only transient failures through: still unreachable after retries
        if not is_transient(exc):
            raise
        raise StoreError(f"cannot reach the store {store.uri}: {type(exc).__name__}: {exc}. Check the endpoint "
                         f"(AWS_ENDPOINT_URL) and the network, then run again") from None


def run(args: argparse.Namespace) -> int:
    from dynslice.config import STORE_DEFAULT, CompressConfig, SweepConfig, read_config
    from dynslice.errors import ConfigError

    if args.workers and args.flow != "sweep":
        raise ConfigError("--workers applies to the sweep only")
    overrides = list(args.overrides) + ([f"store={args.store}"] if args.store else []) \
        + (["runner=dask", f"workers={args.workers}"] if args.workers and args.workers > 1 else [])
    config = read_config(args.config, SweepConfig if args.flow == "sweep" else CompressConfig, overrides)
    # fail in a second, before Prefect starts, when the store cannot be written; a default store on a team server
    # may be the team's (the Prefect Variable dynslice-store), which the flow resolves and checks itself
    team_default = config.store == STORE_DEFAULT and os.environ.get("PREFECT_API_URL")
    if not config.store_block and not team_default:
        preflight(config.store)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no calls home from offline machines
    # a fresh temporary server migrates its SQLite database first: ~30 s on 2 busy cores, past Prefect's 20 s
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    if args.flow == "compress":
        from dynslice.flows.compress import compress

        result = compress(config)
        print(f"\nartifacts: {result['run']}\nmodel:     {result['model']}\nreport:    {result['report']}")
    else:
        from dynslice.flows.sweep import sweep

        result = sweep(config)
        best = result["best"]
        print(f"\nbest: {best['planner']} target {best['target']} variation {best['variation']} "
              f"budget {best['budget']}: held-out ppl {best['perplexity']:.3f}, "
              f"{best['param_reduction']:.1%} parameters removed")
    return 0

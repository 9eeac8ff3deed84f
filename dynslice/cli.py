"""dynslice: compress LLMs by dynamic slicing (SliceGPT rotate-and-slice with per-layer widths).

Each subcommand lives in dynslice/commands/<name>.py and exposes `add_parser(subparsers)` (which sets `func`);
commands that run flows import them inside the command, so importing the library never imports Prefect."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback

from dynslice.errors import DynsliceError

COMMANDS = ("slice", "score", "plan", "assets", "evaluate", "run", "ls", "push")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dynslice", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true", help="on an error, show the traceback too")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"dynslice.commands.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpcore", "urllib3", "botocore", "s3fs", "aiobotocore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except DynsliceError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"dynslice: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dynslice: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""`dynslice push`: publish a sliced model (or a run's model) to the Hugging Face Hub with a model card."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser(
        "push", help="publish a sliced model or a run's model to the Hugging Face Hub, with a model card",
        description="Upload the sliced model's files and a generated README.md (plan, widths, parameters and "
                    "evaluation against the dense model, calibration data, citations) in one commit. The token "
                    "comes from HF_TOKEN or `hf auth login`, never from the command line (which shell history "
                    "and process lists keep).")
    p.add_argument("source", metavar="RUN_OR_FOLDER",
                   help="a run folder runs/<name>/ (local path or fsspec URI, e.g. s3://bucket/store/runs/x) or a "
                        "sliced-model folder written by `dynslice slice`")
    p.add_argument("repo_id", metavar="REPO_ID", help="Hub model repo, e.g. my-org/smollm2-135m-sliced")
    p.add_argument("--private", action="store_true", help="create the repo private (an existing repo is kept)")
    p.add_argument("--revision", default=None, help="branch to commit to, created from main when missing")
    p.add_argument("--message", default=None, help="commit message")
    p.add_argument("--dry-run", action="store_true", help="check the source, print the files and the card; "
                                                          "upload nothing")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dynslice import hub

    if args.dry_run:
        hub.check_repo_id(args.repo_id)
        with hub.staged(args.source) as stage:
            card = hub.model_card(stage.folder, stage.summary, repo_id=args.repo_id)
            print(f"would push to {args.repo_id}:")
            for name in (*stage.files, hub.README):
                print(f"  {name}")
            print(f"\n{card.content}")
        return 0
    url = hub.push(args.source, args.repo_id, private=args.private, revision=args.revision,
                   commit_message=args.message)
    print(f"pushed {args.source} to {args.repo_id}: {url}")
    return 0

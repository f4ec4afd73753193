"""`lxmert-pipeline data info DIR`."""

from __future__ import annotations

import argparse

HELP = "inspect a data root: datasets and splits found, with counts, and the expected files missing"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    info = sub.add_parser("info", help="datasets and splits found, counts, missing files")
    info.add_argument("root", metavar="DIR", help="data root (the layout `synth` writes)")


def run(args: argparse.Namespace) -> int:
    from pipeline.errors import PipelineError
    from pipeline.readers import DataRoot
    from pipeline.readers.info import collect_info, format_info

    root = DataRoot(args.root)
    if not root.exists:
        raise PipelineError("data root not found", args.root)
    print(format_info(root, collect_info(root)))
    return 0

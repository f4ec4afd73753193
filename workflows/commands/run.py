"""`lxmert-pipeline run --config pipeline.yaml`: the whole pipeline as one Dask graph."""

from __future__ import annotations

import argparse
import json
import sys

HELP = "run extract -> pretrain -> finetune -> evaluate as one Dask graph from a config (re-runs resume)"

_EPILOG = """\
The config names the data root, the output folder and each stage's settings; a sample with
every key is in the installed package: workflows/pipeline.yaml
(python -c "import workflows, os; print(os.path.dirname(workflows.__file__))").
Stages whose outputs are complete are skipped, unfinished ones resume, and a stage whose
settings changed since it ran is refused (delete its folder or choose another out).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = _EPILOG
    parser.add_argument("--config", required=True, metavar="YAML", help="the pipeline config")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, help="local Dask workers (overrides the config's `workers:`)")
    where.add_argument("--scheduler", metavar="ADDR", help="use an existing Dask cluster, e.g. tcp://host:8786")


def run(args: argparse.Namespace) -> int:
    from workflows.pipeline_config import load_pipeline_config
    from workflows.pipeline_graph import run_pipeline

    cfg = load_pipeline_config(args.config)
    if args.workers is not None:
        cfg.workers, cfg.scheduler = args.workers, None
    if args.scheduler:
        cfg.scheduler, cfg.workers = args.scheduler, None
    results = run_pipeline(cfg)
    table = {name: {k: v for k, v in record.items() if isinstance(v, (int, float)) or v is None}
             for name, record in results.items() if name.startswith("evaluate ")}
    for name, metrics in table.items():
        main = {k: v for k, v in metrics.items() if k in ("overall", "accuracy", "consistency", "binary", "open")}
        print(f"{name}: " + "  ".join(f"{k} {v:.2f}" for k, v in main.items() if v is not None))
    print(json.dumps({"outputs": {k: v for k, v in results.items() if isinstance(v, str)}}, indent=1),
          file=sys.stderr)
    return 0

"""`lxmert-pipeline run`: the whole method as one Dask graph of stages.

    detector (optional) -> extract -> pretrain (optional) -> finetune <name> ... -> evaluate <name>/<split> ...

Every stage is one task of the graph, submitted with its upstream stages' futures as
arguments, so Dask orders them and runs independent ones side by side: the fine-tunings run
in parallel when there are workers for them (each trains in its worker's process), and each
evaluation starts as soon as its run is done. The fine-tunings go out in the config's order,
one per free worker thread, instead of all at once: Dask places every ready task on a worker
up front, knowing nothing of how long each takes, so the longest run could start last on a
busy worker while the other sat idle (list long runs first; the demo does). Stages that fan
out themselves (the extraction's shard tasks, pretraining's DDP ranks over every worker)
submit their tasks to the same cluster from inside the stage (`worker_client`).

Every node calls its stage (pipeline/stages/) with a `DaskExecutor` on the graph's own
client, after the one rule of pipeline/stages/record.py: each stage directory holds
`pipeline-stage.json`, a fingerprint of the settings it was made with; a complete stage
with the same settings is skipped, an unfinished one resumes, a changed one is refused.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError
from pipeline.stages.record import claim
from workflows.pipeline_config import TRAIN_SECTION, PipelineConfig

log = logging.getLogger(__name__)

_FORWARDED_LOGGERS = ("pipeline", "workflows")


@contextlib.contextmanager
def _stage(name: str):
    """A stage's logging in its worker: INFO lines reach the client (forward_logging)."""
    for logger in _FORWARDED_LOGGERS:
        logging.getLogger(logger).setLevel(logging.INFO)
    t0 = time.perf_counter()
    log.info("%s: started", name)
    yield
    log.info("%s: done in %.0f s", name, time.perf_counter() - t0)


@contextlib.contextmanager
def _executor(cfg: PipelineConfig):
    """An executor for the stage's own tasks (shards, DDP ranks) on the graph's cluster when
    the node runs as a graph task; else a local cluster, as the stage's command starts."""
    from workflows.executors import DaskExecutor

    try:
        from distributed import get_worker, worker_client

        get_worker()
    except (ImportError, ValueError):
        with DaskExecutor(device=cfg.device) as executor:
            yield executor
        return
    with worker_client() as client, DaskExecutor(device=cfg.device, client=client) as executor:
        yield executor


def _this_worker():
    """The executor of a stage that trains in the worker running its node (else here)."""
    from pipeline.stages.executor import InProcess
    from workflows.executors import OnThisWorker

    try:
        from distributed import get_worker

        get_worker()
    except (ImportError, ValueError):
        return InProcess()
    return OnThisWorker()


# ---- the stages ----------------------------------------------------------------------------

def detector_node(cfg: PipelineConfig) -> str:
    from pipeline.stages.train_detector import train_detector
    from pipeline.training import RunDir

    section = dict(cfg.detector or {})
    train = dict(section.pop(TRAIN_SECTION, None) or {})
    directory = cfg.detector_dir
    final = directory / "final"
    settings = {"data": str(Path(cfg.data).resolve()), "detector": cfg.detector}
    if not claim(directory, settings, (final / "model.safetensors").is_file()):
        log.info("detector: complete, skipped (%s)", final)
        return str(final)
    with _stage("detector"), _executor(cfg) as executor:
        results = train_detector(cfg.data, directory, executor, layers=({"device": cfg.device, "progress": False},
                                                                        train),
                                 resume=RunDir(directory).has_run(), **section)
    if results.get("final") is None:
        raise PipelineError("detector training ended without a final model", directory)
    return str(results["final"])


def extract_node(cfg: PipelineConfig, detector_final: str | None) -> str:
    from pipeline.extract import resolve_spec
    from pipeline.stages.extract import extract

    section = dict(cfg.extract)
    if section.get("features"):
        from pipeline.features import FeatureStore

        FeatureStore(section["features"])   # an existing store must open (manifest, shards)
        return str(section["features"])
    images = section.pop("images", None) or str(Path(cfg.data) / "images")
    weights = section.pop("weights", None) or detector_final
    preset = section.pop("preset", "vg-r101-c4")
    selection = {k: section.pop(k, None) for k in ("min_boxes", "max_boxes")}
    selection["method"] = section.pop("selection", None)
    spec = resolve_spec(preset, weights, device=cfg.device, autocast=section.pop("autocast", None),
                        selection=selection)
    directory = cfg.features_dir
    settings = {"images": str(Path(images).resolve()), "detector": spec.config, "weights_sha256": spec.weights_sha256,
                "extract": cfg.extract}
    claim(directory, settings, complete=False)   # extraction resumes shard by shard by itself
    with _stage("extract"), _executor(cfg) as executor:
        summary = extract(images, str(directory), spec, executor, shard_size=section.pop("shard_size", 1000),
                          batch_size=section.pop("batch_size", 1), feature_dtype=section.pop("dtype", "float16"),
                          decode_threads=section.pop("decode_threads", 2), retries=section.pop("retries", 2),
                          progress=False)
    for line in summary.lines():
        log.info("%s", line)
    return str(directory)


def pretrain_node(cfg: PipelineConfig, store: str) -> str:
    from pipeline.stages.pretrain import pretrain
    from pipeline.training import RunDir

    section = dict(cfg.pretrain or {})
    directory = cfg.pretrain_dir
    settings = {"features": str(Path(store).resolve()), "data": str(Path(cfg.data).resolve()),
                "pretrain": cfg.pretrain}
    if not claim(directory, settings, (directory / "final" / "config.json").is_file()):
        log.info("pretrain: complete, skipped (%s)", directory / "final")
        return str(directory)
    with _stage("pretrain"), _executor(cfg) as executor:
        pretrain(store, cfg.data, directory, executor, preset=section.get("preset", "base"),
                 options=section.get("task") or {}, vocab=section.get("vocab"), answers=section.get("answers"),
                 layers=({"device": cfg.device, "progress": False}, section.get(TRAIN_SECTION) or {}),
                 resume=RunDir(directory).has_run())
    return str(directory)


def finetune_node(cfg: PipelineConfig, name: str, store: str, pretrain_run: str | None) -> str:
    from pipeline.stages.finetune import FinetuneOptions, finetune
    from pipeline.training import RunDir

    section = dict(cfg.finetune[name])
    train = section.pop(TRAIN_SECTION, None) or {}
    init = section.pop("init", "pretrain")
    if str(init) == "pretrain":
        init = pretrain_run
    elif str(init).lower() == "none":
        init = None
    options = FinetuneOptions.from_dict({**section, "init": init, "features": store, "data": cfg.data})
    directory = cfg.finetune_dir(name)
    settings = {"options": {k: str(v) for k, v in vars(options).items()}, "section": cfg.finetune[name]}
    if not claim(directory, settings, (directory / "final" / "config.json").is_file()):
        log.info("finetune %s: complete, skipped (%s)", name, directory / "final")
        return str(directory)
    with _stage(f"finetune {name}"):
        # in this worker's process, on its own GPU: the graph runs its fine-tunings side by
        # side, one per worker
        result = finetune(options, directory, _this_worker(), layers=({"device": cfg.device, "progress": False},
                                                                      train),
                          resume=RunDir(directory).has_run())
    best = result.get("best")
    if best is not None:
        log.info("finetune %s: best validation %s %.2f at step %d", name, best["metric"], best["value"], best["step"])
    return str(directory)


def evaluate_node(cfg: PipelineConfig, name: str, split: str, run: str) -> dict[str, Any]:
    from pipeline.evaluation.evaluate import results_record
    from pipeline.stages.evaluate import evaluate

    task = cfg.finetune[name]["task"]
    out = cfg.evaluation_dir(name, split)
    results = out / "results.json"
    model = Path(run) / "best"
    model = model if model.is_dir() else Path(run) / "final"
    settings = {"run": str(Path(run).resolve()), "split": split,
                "model_time": (model / "model.safetensors").stat().st_mtime_ns}
    if not claim(out, settings, results.is_file()):
        return json.loads(results.read_text(encoding="utf-8"))
    with _stage(f"evaluate {name} {split}"):
        evaluation, _, submission = evaluate(task, cfg.data, split, run=run, out=out)
    return results_record(evaluation, submission)


# ---- the graph -----------------------------------------------------------------------------

def _submit(client, key: str, fn, *args):
    return client.submit(fn, *args, key=f"{key}-{time.time_ns()}", pure=False, retries=0)


def submit_stages(client, cfg: PipelineConfig) -> dict[str, Any]:
    """Submit the stages before the fine-tunings (detector, extract, pretrain); returns
    {stage name: future}."""
    futures: dict[str, Any] = {}
    detector = None
    if cfg.detector is not None:
        detector = futures["detector"] = _submit(client, "detector", detector_node, cfg)
    futures["extract"] = _submit(client, "extract", extract_node, cfg, detector)
    if cfg.pretrain is not None:
        futures["pretrain"] = _submit(client, "pretrain", pretrain_node, cfg, futures["extract"])
    return futures


def submit_finetune(client, cfg: PipelineConfig, name: str, upstream: dict[str, Any]) -> dict[str, Any]:
    """Submit fine-tuning `name` and its evaluations after `upstream`'s extract (and pretrain)
    futures; returns {stage name: future}."""
    run = _submit(client, f"finetune-{name}", finetune_node, cfg, name, upstream["extract"],
                  upstream.get("pretrain"))
    futures = {f"finetune {name}": run}
    for split in cfg.splits(name):
        futures[f"evaluate {name} {split}"] = _submit(client, f"evaluate-{name}-{split}", evaluate_node, cfg, name,
                                                      split, run)
    return futures


def _worker_threads(client) -> int:
    return max(1, sum(w.get("nthreads", 1) for w in client.scheduler_info()["workers"].values()))


def run_pipeline(cfg: PipelineConfig) -> dict[str, Any]:
    """Run the graph on a local cluster (`cfg.workers`) or `cfg.scheduler`; returns each
    stage's result (paths, and the evaluations' results records) by stage name."""
    from distributed import as_completed

    from workflows.cluster import dask_client

    with dask_client(workers=cfg.workers, scheduler=cfg.scheduler, device=cfg.device) as client:
        for logger in _FORWARDED_LOGGERS:
            client.forward_logging(logger, level=logging.INFO)
        futures = submit_stages(client, cfg)
        waiting = list(cfg.finetune)
        names = {f.key: name for name, f in futures.items()}
        pending = as_completed(list(futures.values()))

        def start_next_finetune() -> None:
            submitted = submit_finetune(client, cfg, waiting.pop(0), futures)
            futures.update(submitted)
            for name, future in submitted.items():
                names[future.key] = name
                pending.add(future)

        for _ in range(min(_worker_threads(client), len(waiting))):
            start_next_finetune()
        results: dict[str, Any] = {}
        try:
            for future in pending:
                name = names[future.key]
                try:
                    results[name] = future.result()
                except PipelineError:
                    raise
                except Exception as err:  # noqa: BLE001 - one line naming the stage
                    raise PipelineError(f"stage {name!r} failed: {type(err).__name__}: {err}") from err
                if name.startswith("finetune ") and waiting:
                    start_next_finetune()
        finally:
            client.cancel([f for f in futures.values() if not f.done()])
        return {name: results[name] for name in futures}

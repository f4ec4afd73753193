"""The extraction stage on Dask: images -> shards, one task per shard.

- Images are found and sorted by image_id (pipeline/images.py) and cut into shards of
  `shard_size`: shard k always holds the same images for the same folder and shard size.
- One task per missing shard via `client.map(..., pure=False, retries=...)`, with
  `resources={"GPU": 1}` on GPUs (reference/ecosystem.md §2: futures keep the restriction,
  annotated bags lose it). Existing shards are checked (same detector metadata, same images)
  and skipped, so a re-run resumes.
- The model is built once per worker by a `WorkerPlugin` (re-run by Dask on restarted
  workers); a lazy per-process cache covers workers without the plugin.
- A worker killed mid-run: Dask reruns its tasks elsewhere, including shards it had already
  finished (their results died with it); shard writes are atomic and deterministic, so a
  re-run rewrites the same bytes and each image is stored exactly once.
- Progress: a tqdm bar over images, driven by `as_completed`, showing images/s; when stderr
  is not a terminal, one log line per 30 s instead. Then `finalize_store` and a summary.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from pipeline.errors import PipelineError
from pipeline.extract import Extractor, ExtractorSpec, ShardResult, extract_shard
from pipeline.images import ImageEntry, discover_images

log = logging.getLogger(__name__)

try:
    from distributed import WorkerPlugin
except ImportError:  # pragma: no cover - distributed is a dependency; keep import errors readable
    WorkerPlugin = object


def spec_key(spec: ExtractorSpec) -> str:
    blob = json.dumps([spec.config, spec.weights, spec.weights_sha256, spec.device, spec.autocast, spec.seed],
                      sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def plugin_name(spec: ExtractorSpec) -> str:
    return f"lxmert-pipeline-extractor-{spec_key(spec)}"


class ExtractorPlugin(WorkerPlugin):
    """Loads the detector once when a worker starts (and again on a restarted worker)."""

    def __init__(self, spec: ExtractorSpec):
        self.spec = spec
        self.extractor: Extractor | None = None
        self.error: BaseException | None = None

    def setup(self, worker=None) -> None:
        try:
            self.extractor = Extractor(self.spec)
        except Exception as err:  # noqa: BLE001 - reported by the first task, with its message
            self.error = err

    def teardown(self, worker=None) -> None:
        self.extractor = None


_PROCESS_CACHE: dict[str, Extractor] = {}
_PROCESS_LOCK = threading.Lock()


def get_extractor(spec: ExtractorSpec) -> Extractor:
    """The worker's plugin-loaded detector, else one built lazily once per process."""
    try:
        from distributed import get_worker

        plugin = get_worker().plugins.get(plugin_name(spec))
    except (ImportError, ValueError):
        plugin = None
    if plugin is not None:
        if plugin.error is not None:
            raise plugin.error
        if plugin.extractor is not None:
            return plugin.extractor
    key = spec_key(spec)
    with _PROCESS_LOCK:
        if key not in _PROCESS_CACHE:
            _PROCESS_CACHE[key] = Extractor(spec)
        return _PROCESS_CACHE[key]


def extract_shard_task(index: int, entries: Sequence[ImageEntry], out_dir: str, spec: ExtractorSpec,
                       options: dict) -> ShardResult:
    # options travel as one dict: `client.map` would swallow a keyword named batch_size
    return extract_shard(index, entries, out_dir, get_extractor(spec), **options)


@dataclass
class ExtractSummary:
    images: int
    extracted: int
    failed: int
    shards_total: int
    shards_written: int
    shards_skipped: int
    seconds: float
    out_dir: str
    extracted_this_run: int = 0       # images processed by this run's tasks (0 on a full resume)

    @property
    def images_per_second(self) -> float:
        return self.extracted_this_run / self.seconds if self.seconds > 0 else 0.0

    def lines(self) -> list[str]:
        return [f"extract: {self.extracted}/{self.images} images in the store, {self.failed} failed"
                + (f" (reasons in {Path(self.out_dir) / 'failures.jsonl'})" if self.failed else ""),
                f"extract: {self.shards_written} shards written, {self.shards_skipped} already complete "
                f"(of {self.shards_total}); {self.extracted_this_run} images in {self.seconds:.1f} s "
                f"= {self.images_per_second:.2f} images/s; store: {self.out_dir}"]


def cut_shards(entries: Sequence[ImageEntry], shard_size: int) -> list[list[ImageEntry]]:
    if shard_size < 1:
        raise PipelineError(f"--shard-size must be at least 1, got {shard_size}")
    return [list(entries[i:i + shard_size]) for i in range(0, len(entries), shard_size)]


def _check_existing(out: Path, index: int, shard: Sequence[ImageEntry], metadata) -> bool:
    """True when the shard exists and belongs to this run; a foreign shard is an error."""
    import pyarrow.parquet as pq

    from pipeline.features import read_shard_metadata, shard_name

    path = out / shard_name(index)
    if not path.is_file():
        return False
    try:
        found, _ = read_shard_metadata(path)
        ids = set(pq.read_table(path, columns=["image_id"]).column(0).to_pylist())
    except Exception as err:  # noqa: BLE001 - any unreadable shard is reported the same way
        raise PipelineError(f"existing shard is unreadable ({err}); delete it to re-extract", path) from None
    diff = found.differences(metadata)
    if diff:
        raise PipelineError(f"existing shard was made with a different {', '.join(diff)}; extract into a new "
                            f"--out folder (or delete the old store)", path)
    if not ids <= {e.image_id for e in shard}:
        raise PipelineError("existing shard holds other images than this run assigns to it (different "
                            "--shard-size or image folder?); use a new --out folder", path)
    return True


def _rewrite_failures(out: Path, entries: Sequence[ImageEntry], stored: set[str]) -> list[dict]:
    """failures.jsonl = one line per image of this folder that is not in the store (latest reason)."""
    from pipeline.atomic import atomic_open
    from pipeline.features import FAILURES, read_failures

    by_path = {e.path: e for e in entries}
    latest: dict[str, dict] = {}
    for record in read_failures(out):
        entry = by_path.get(record.get("image"))
        if entry is not None and entry.image_id not in stored:
            latest[entry.path] = record
    records = [latest[p] for p in sorted(latest)]
    if records or (out / FAILURES).exists():
        with atomic_open(out / FAILURES, "w", encoding="utf-8") as fh:
            for r in records:
                fh.write(json.dumps(r, sort_keys=True) + "\n")
    return records


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="img", desc="extract", file=sys.stderr, dynamic_ncols=True, smoothing=0.1,
                disable=None if enabled else True)


def run_extract(images_dir: str, out_dir: str, spec: ExtractorSpec, *, shard_size: int = 1000,
                batch_size: int = 1, feature_dtype: str = "float16", workers: int | None = None,
                scheduler: str | None = None, decode_threads: int = 2, retries: int = 2,
                progress: bool = True, client=None) -> ExtractSummary:
    from distributed import as_completed

    from pipeline.atomic import remove_stale_temporaries
    from pipeline.features import append_failures, finalize_store
    from workflows.cluster import dask_client

    t0 = time.perf_counter()
    if batch_size < 1:
        raise PipelineError(f"--batch-size must be at least 1, got {batch_size}")
    entries = discover_images(images_dir)
    if not entries:
        raise PipelineError("no .jpg/.jpeg/.png images found (searched recursively)", images_dir)
    shards = cut_shards(entries, shard_size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    metadata = spec.store_metadata(feature_dtype)
    todo = [i for i, shard in enumerate(shards) if not _check_existing(out, i, shard, metadata)]
    skipped = len(shards) - len(todo)
    if skipped:
        log.info("resuming: %d of %d shards already complete", skipped, len(shards))
    if spec.weights == "random":
        log.warning("=" * 72)
        log.warning("RANDOM WEIGHTS: the %s detector is randomly initialised (--weights random).",
                    metadata.detector)
        log.warning("These features are meaningless; use them for tests and benchmarks only.")
        log.warning("=" * 72)

    written = 0
    done_images = 0
    if todo:
        _preflight(spec)
        gpu = spec.device.startswith("cuda")
        with dask_client(workers=workers, scheduler=scheduler, device=spec.device, client=client) as client:
            if gpu and not any(w.get("resources", {}).get("GPU") for w in client.scheduler_info()["workers"].values()):
                raise PipelineError("--device cuda, but no Dask worker advertises the GPU resource "
                                    "(start workers with `dask worker ADDR --resources GPU=1`)")
            client.register_plugin(ExtractorPlugin(spec), name=plugin_name(spec))
            token = uuid.uuid4().hex[:8]
            futures = client.map(
                extract_shard_task, todo, [shards[i] for i in todo],
                out_dir=str(out), spec=spec,
                options={"batch_size": batch_size, "feature_dtype": feature_dtype, "decode_threads": decode_threads},
                key=[f"extract-shard-{i:05d}-{token}" for i in todo],
                pure=False, retries=retries, resources={"GPU": 1} if gpu else None)
            bar = _progress(sum(len(shards[i]) for i in todo), progress)
            last_log = time.perf_counter()
            try:
                for future in as_completed(futures):
                    try:
                        result: ShardResult = future.result()
                    except PipelineError:
                        raise
                    except Exception as err:  # noqa: BLE001 - name the shard, one line
                        index = todo[futures.index(future)]
                        raise PipelineError(f"shard {index} failed after {retries} retries: "
                                            f"{type(err).__name__}: {err}", out) from err
                    append_failures(out, result.failures)
                    written += 1
                    done_images += result.num_images
                    bar.update(result.num_images)
                    if bar.disable and time.perf_counter() - last_log > 30:
                        last_log = time.perf_counter()
                        rate = done_images / (last_log - t0)
                        log.info("extract: %d/%d shards, %d images, %.2f images/s", written + skipped,
                                 len(shards), done_images, rate)
            finally:
                bar.close()
                client.cancel(futures)
            client.unregister_worker_plugin(plugin_name(spec))

    finalize_store(out, metadata)
    stored = _stored_ids(out)
    failures = _rewrite_failures(out, entries, stored)
    return ExtractSummary(images=len(entries), extracted=len(stored), failed=len(failures),
                          shards_total=len(shards), shards_written=written, shards_skipped=skipped,
                          seconds=time.perf_counter() - t0, out_dir=str(out), extracted_this_run=done_images)


def _stored_ids(out: Path) -> set[str]:
    import pyarrow.parquet as pq

    from pipeline.features import shard_paths

    ids: set[str] = set()
    for path in shard_paths(out):
        ids.update(pq.read_table(path, columns=["image_id"]).column(0).to_pylist())
    return ids


def _preflight(spec: ExtractorSpec) -> None:
    """Check the weights file against the config on the client before any worker starts,
    so a wrong file is one clear line instead of a failure in every task."""
    if spec.weights == "random":
        return
    from detector.checkpoint import CheckpointError, check_weights

    target = Path(spec.weights)
    target = target / "model.safetensors" if target.is_dir() else target
    try:
        check_weights(spec.detector_config(), target)
    except CheckpointError as err:
        raise PipelineError(str(err)) from None

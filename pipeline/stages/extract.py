"""The extraction stage: a folder of images -> a feature store, one work item per shard.

- Images are found and sorted by image_id (pipeline/images.py) and cut into shards of
  `shard_size`: shard k always holds the same images for the same folder and shard size.
- Existing shards are checked (same detector metadata, same images) and skipped, so a
  re-run resumes; only the missing shards go to the executor.
- The detector is the executor's per-worker resource: built once per worker, released when
  the map ends. Shard writes are atomic and deterministic, so a shard an executor runs
  twice (a worker lost after writing it) is rewritten with the same bytes and every image
  is stored exactly once.
- Progress: a tqdm bar over images showing images/s; when stderr is not a terminal, one log
  line per 30 s instead. Then `finalize_store` (manifest.json) and a summary.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from pipeline.errors import PipelineError
from pipeline.extract import Extractor, ExtractorSpec, ShardResult, extract_shard
from pipeline.images import ImageEntry, discover_images
from pipeline.stages.executor import InProcess, PerWorker, ShardFailed

log = logging.getLogger(__name__)


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
    extracted_this_run: int = 0       # images processed by this run's work items (0 on a full resume)

    @property
    def images_per_second(self) -> float:
        return self.extracted_this_run / self.seconds if self.seconds > 0 else 0.0

    def lines(self) -> list[str]:
        return [f"extract: {self.extracted}/{self.images} images in the store, {self.failed} failed"
                + (f" (reasons in {Path(self.out_dir) / 'failures.jsonl'})" if self.failed else ""),
                f"extract: {self.shards_written} shards written, {self.shards_skipped} already complete "
                f"(of {self.shards_total}); {self.extracted_this_run} images in {self.seconds:.1f} s "
                f"= {self.images_per_second:.2f} images/s; store: {self.out_dir}"]


def detector_key(spec: ExtractorSpec) -> str:
    """Equal for specs that build the same detector (names the per-worker resource)."""
    blob = json.dumps([spec.config, spec.weights, spec.weights_sha256, spec.device, spec.autocast, spec.seed],
                      sort_keys=True)
    return "lxmert-pipeline-extractor-" + hashlib.sha1(blob.encode()).hexdigest()[:12]


def cut_shards(entries: Sequence[ImageEntry], shard_size: int) -> list[list[ImageEntry]]:
    if shard_size < 1:
        raise PipelineError(f"--shard-size must be at least 1, got {shard_size}")
    return [list(entries[i:i + shard_size]) for i in range(0, len(entries), shard_size)]


def extract(images_dir: str, out_dir: str, spec: ExtractorSpec, executor=None, *, shard_size: int = 1000,
            batch_size: int = 1, feature_dtype: str = "float16", decode_threads: int = 2, retries: int = 2,
            progress: bool = True) -> ExtractSummary:
    """Extract every image under `images_dir` into the store `out_dir` with the detector
    `spec`; `executor` runs the shards (default: one after another in this process)."""
    from pipeline.atomic import remove_stale_temporaries
    from pipeline.features import append_failures, finalize_store

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
    todo = [i for i, shard in enumerate(shards) if not _shard_complete(out, i, shard, metadata)]
    skipped = len(shards) - len(todo)
    if skipped:
        log.info("resuming: %d of %d shards already complete", skipped, len(shards))
    if spec.weights == "random":
        log.warning("=" * 72)
        log.warning("RANDOM WEIGHTS: the %s detector is randomly initialised (--weights random).",
                    metadata.detector)
        log.warning("These features are meaningless; use them for tests and benchmarks only.")
        log.warning("=" * 72)

    written = done_images = 0
    if todo:
        _check_weights(spec)
        work = functools.partial(_extract_one_shard, out_dir=str(out), options={
            "batch_size": batch_size, "feature_dtype": feature_dtype, "decode_threads": decode_threads})
        detector = PerWorker(detector_key(spec), functools.partial(Extractor, spec))
        bar = _progress(sum(len(shards[i]) for i in todo), progress)
        last_log = time.perf_counter()
        try:
            for _, result in (executor or InProcess()).map_shards(
                    work, [(i, shards[i]) for i in todo], per_worker=detector,
                    gpu=spec.device.startswith("cuda"), retries=retries):
                append_failures(out, result.failures)
                written += 1
                done_images += result.num_images
                bar.update(result.num_images)
                if bar.disable and time.perf_counter() - last_log > 30:
                    last_log = time.perf_counter()
                    log.info("extract: %d/%d shards, %d images, %.2f images/s", written + skipped, len(shards),
                             done_images, done_images / (last_log - t0))
        except ShardFailed as failed:
            raise PipelineError(f"shard {todo[failed.index]} failed after {retries} retries: {failed}",
                                out) from failed.cause
        finally:
            bar.close()

    stored = finalize_store(out, metadata)["image_ids"]
    failures = _rewrite_failures(out, entries, stored)
    return ExtractSummary(images=len(entries), extracted=len(stored), failed=len(failures),
                          shards_total=len(shards), shards_written=written, shards_skipped=skipped,
                          seconds=time.perf_counter() - t0, out_dir=str(out), extracted_this_run=done_images)


def _extract_one_shard(item: tuple[int, Sequence[ImageEntry]], extractor: Extractor, *, out_dir: str,
                       options: dict) -> ShardResult:
    index, entries = item
    return extract_shard(index, entries, out_dir, extractor, **options)


def _shard_complete(out: Path, index: int, shard: Sequence[ImageEntry], metadata) -> bool:
    """True when the shard exists and belongs to this run; a foreign shard is an error."""
    from pipeline.features import read_shard_metadata, shard_image_ids, shard_name

    path = out / shard_name(index)
    if not path.is_file():
        return False
    try:
        found, _ = read_shard_metadata(path)
        ids = set(shard_image_ids(path))
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


def _check_weights(spec: ExtractorSpec) -> None:
    """Check the weights file against the config here, before any worker starts, so a wrong
    file is one clear line instead of a failure in every shard."""
    if spec.weights == "random":
        return
    from detector.checkpoint import CheckpointError, check_weights

    try:
        check_weights(spec.detector_config(), spec.weights)
    except CheckpointError as err:
        raise PipelineError(str(err)) from None

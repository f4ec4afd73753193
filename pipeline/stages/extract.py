"""The extraction stage: a folder of images -> a feature store, one work item per shard.

- Images are found and sorted by image_id (pipeline/images.py) and cut into shards of
  `shard_size`: shard k always holds the same images for the same folder and shard size.
- One run at a time writes a store (`STORE/.lock`). Existing shards are checked (same
  detector metadata, same images) and skipped, so a re-run resumes; only the missing
  shards go to the executor. Images that failed stay out of their shard; `retry_failed`
  extracts them again and adds them to it.
- The detector is the executor's per-worker resource: built once per worker, released when
  the map ends. Shard writes are atomic and deterministic, so a shard an executor runs
  twice (a worker lost after writing it) is rewritten with the same bytes and every image
  is stored exactly once.
- Progress: a tqdm bar over images showing images/s; when stderr is not a terminal, one log
  line per 30 s instead. Then `finalize_store` (manifest.json) and a summary.
- A re-run reads each complete shard's footer and ids once (the skip check's reads are
  handed to `finalize_store`) and hashes no shard it can trust: written shards come with
  their writers' checksums, skipped ones keep the manifest's while the verification stamp
  (pipeline/features/integrity.py) vouches that the file is the one that hashed to it.
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

from pipeline.errors import PipelineError, UsageError
from pipeline.extract import Extractor, ExtractorSpec, ShardResult, extract_shard
from pipeline.images import ImageEntry, discover_images
from pipeline.stages.executor import InProcess, PerWorker, ShardFailed

log = logging.getLogger(__name__)


@dataclass
class ExtractSummary:
    """What one run of `extract` asked for and what the store holds of it."""

    images: int                       # images of this run's folder
    extracted: int                    # of those, stored (by this run or an earlier one)
    failed: int                       # of those, not stored (reasons in failures.jsonl)
    shards_total: int
    shards_written: int
    shards_skipped: int
    seconds: float
    out_dir: str
    extracted_this_run: int = 0       # images processed by this run's work items (0 on a full resume)
    retried: int = 0                  # earlier failures this run tried again (--retry-failed)
    retried_stored: int = 0           # of those, now in the store

    @property
    def images_per_second(self) -> float:
        return self.extracted_this_run / self.seconds if self.seconds > 0 else 0.0

    def lines(self) -> list[str]:
        failures = Path(self.out_dir) / "failures.jsonl"
        first = f"extract: {self.extracted}/{self.images} images in the store, {self.failed} failed"
        if self.retried:
            first += f" ({self.retried} retried, {self.retried_stored} now stored)"
        if self.failed:
            first += (f"; reasons in {failures}; after fixing them, re-run with --retry-failed to extract "
                      f"them again")
        return [first,
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
        raise UsageError(f"--shard-size must be at least 1, got {shard_size}")
    return [list(entries[i:i + shard_size]) for i in range(0, len(entries), shard_size)]


def extract(images_dir: str, out_dir: str, spec: ExtractorSpec, executor=None, *, shard_size: int = 1000,
            batch_size: int = 1, feature_dtype: str = "float16", decode_threads: int = 2, retries: int = 2,
            progress: bool = True, retry_failed: bool = False) -> ExtractSummary:
    """Extract every image under `images_dir` into the store `out_dir` with the detector
    `spec`; `executor` runs the shards (default: one after another in this process).
    `retry_failed`: also extract again the images missing from complete shards (they
    failed in an earlier run), adding them to their shards.

    One run at a time owns `out_dir` (pipeline/features/lock.py): a second one is refused
    before it touches anything."""
    from pipeline.features.lock import store_lock

    t0 = time.perf_counter()
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    entries = discover_images(images_dir)
    if not entries:
        raise PipelineError("no .jpg/.jpeg/.png images found (searched recursively)", images_dir)
    shards = cut_shards(entries, shard_size)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise PipelineError("is a file; --out names the feature store's folder", out)
    out.mkdir(parents=True, exist_ok=True)
    with store_lock(out, "extract"):
        return _extract_locked(images_dir, entries, shards, out, spec, executor, t0, batch_size=batch_size,
                               feature_dtype=feature_dtype, decode_threads=decode_threads, retries=retries,
                               progress=progress, retry_failed=retry_failed)


def _extract_locked(images_dir: str, entries: list[ImageEntry], shards: list[list[ImageEntry]], out: Path,
                    spec: ExtractorSpec, executor, t0: float, *, batch_size: int, feature_dtype: str,
                    decode_threads: int, retries: int, progress: bool, retry_failed: bool) -> ExtractSummary:
    from pipeline.atomic import remove_stale_temporaries
    from pipeline.features import ShardReads, append_failures, finalize_store

    remove_stale_temporaries(out)
    metadata = spec.store_metadata(feature_dtype)
    # each complete shard's ids are read once: here for the skip check, reused by finalize_store
    reads = ShardReads()
    # (index, images to extract, add them to the existing shard?)
    items: list[tuple[int, list[ImageEntry], bool]] = []
    for i, shard in enumerate(shards):
        stored = _stored_shard_ids(out, i, shard, metadata, reads)
        if stored is None:
            items.append((i, shard, False))
        elif retry_failed and len(stored) < len(shard):
            items.append((i, [e for e in shard if e.image_id not in stored], True))
    retried = [e.image_id for _, shard_entries, add in items if add for e in shard_entries]
    skipped = len(shards) - sum(1 for *_, add in items if not add)
    if skipped:
        log.info("resuming: %d of %d shards already complete", skipped, len(shards))
    if spec.weights == "random":
        log.warning("=" * 72)
        log.warning("RANDOM WEIGHTS: the %s detector is randomly initialised (--weights random).",
                    metadata.detector)
        log.warning("These features are meaningless; use them for tests and benchmarks only.")
        log.warning("=" * 72)

    written = done_images = 0
    infos = []   # the written shards' checksums, computed by their writers
    if items:
        _check_weights(spec)
        executor = executor or InProcess()
        executor.check_paths(read=[images_dir], write=[str(out)])
        work = functools.partial(_extract_one_shard, out_dir=str(out), options={
            "batch_size": batch_size, "feature_dtype": feature_dtype, "decode_threads": decode_threads})
        detector = PerWorker(detector_key(spec), functools.partial(Extractor, spec))
        bar = _progress(sum(len(e) for _, e, _ in items), progress)
        last_log = time.perf_counter()
        try:
            for _, result in executor.map_shards(
                    work, items, per_worker=detector, gpu=spec.device.startswith("cuda"), retries=retries):
                append_failures(out, result.failures)
                infos.append(result.info)
                written += 1
                done_images += result.num_images
                bar.update(result.num_images)
                if bar.disable and time.perf_counter() - last_log > 30:
                    last_log = time.perf_counter()
                    log.info("extract: %d/%d shards, %d images, %.2f images/s", written + skipped, len(shards),
                             done_images, done_images / (last_log - t0))
        except ShardFailed as failed:
            raise PipelineError(f"shard {items[failed.index][0]} failed after {retries} retries: {failed}",
                                out) from failed.cause
        finally:
            bar.close()

    # skipped shards keep the manifest's checksums while the verification stamp vouches for them
    stored = finalize_store(out, metadata, infos, reads)["image_ids"]
    _rewrite_failures(out, entries, stored)
    ours = sum(1 for e in entries if e.image_id in stored)
    return ExtractSummary(images=len(entries), extracted=ours, failed=len(entries) - ours,
                          shards_total=len(shards), shards_written=written, shards_skipped=skipped,
                          seconds=time.perf_counter() - t0, out_dir=str(out), extracted_this_run=done_images,
                          retried=len(retried), retried_stored=sum(1 for i in retried if i in stored))


def _extract_one_shard(item: tuple[int, Sequence[ImageEntry], bool], extractor: Extractor, *, out_dir: str,
                       options: dict) -> ShardResult:
    index, entries, add_to_existing = item
    return extract_shard(index, entries, out_dir, extractor, add_to_existing=add_to_existing, **options)


def _stored_shard_ids(out: Path, index: int, shard: Sequence[ImageEntry], metadata, reads) -> set[str] | None:
    """The ids in shard `index` when it exists and belongs to this run (None when it does
    not exist); a foreign shard is an error. `reads` (a `ShardReads`) keeps what was read."""
    from pipeline.features import shard_name

    path = out / shard_name(index)
    if not path.is_file():
        return None
    try:
        found, _, ids = reads(path)
        ids = set(ids)
    except Exception as err:  # noqa: BLE001 - any unreadable shard is reported the same way
        raise PipelineError(f"existing shard is unreadable ({err}); delete it to re-extract", path) from None
    diff = found.differences(metadata)
    if diff:
        raise PipelineError(f"existing shard was made with a different {', '.join(diff)}; extract into a new "
                            f"--out folder (or delete the old store)", path)
    if not ids <= {e.image_id for e in shard}:
        raise PipelineError("existing shard holds other images than this run assigns to it (different "
                            "--shard-size or image folder?); use a new --out folder", path)
    return ids


def _rewrite_failures(out: Path, entries: Sequence[ImageEntry], stored: set[str]) -> list[dict]:
    """failures.jsonl = the latest record of each image of this folder that is not in the
    store. Records are matched by image id, never by path: the same folder spelled another
    way (relative, absolute, moved) keeps its records."""
    from pipeline.atomic import atomic_open
    from pipeline.features import FAILURES, read_failures

    ours = {e.image_id for e in entries}
    latest: dict[str, dict] = {}
    for record in read_failures(out):
        image_id = record.get("image_id") or Path(str(record.get("image", ""))).stem
        if image_id in ours and image_id not in stored:
            latest[image_id] = record
    records = [latest[i] for i in sorted(latest)]
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

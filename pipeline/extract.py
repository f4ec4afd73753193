"""The extraction stage in one process: a list of images -> one feature-store shard.

`ExtractorSpec` says which detector (preset or saved config, weights, device, precision);
it is small and picklable, so a Dask worker can build the model from it once.
`Extractor` is the loaded model. `extract_shard` decodes images in worker threads (bounded
read-ahead, overlapped with the forward passes), runs padded batches, and writes one Parquet
shard atomically through `pipeline.features.write_shard`. Images that cannot be decoded (or
on which the detector fails) are returned as failures with a reason; the others still make
the shard. Nothing here knows about Dask.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from pipeline.errors import PipelineError
from pipeline.features import ImageFeatures, ShardInfo, StoreMetadata, write_shard
from pipeline.features.shard import file_sha256, nonfinite_problem
from pipeline.images import ImageDecodeError, ImageEntry, decode_image

log = logging.getLogger(__name__)

WEIGHTS_FILE = "faster_rcnn_from_caffe_attr.pkl"
WEIGHTS_SOURCE = ("faster_rcnn_from_caffe_attr.pkl from airsplay/py-bottom-up-attention (README, "
                  "http://nlp.cs.unc.edu/models/faster_rcnn_from_caffe_attr.pkl), or pytorch_model.bin "
                  "from the Hugging Face repo unc-nlp/frcnn-vg-finetuned")
AUTOCAST = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16"}


def weights_cache_dir() -> Path:
    base = os.environ.get("LXMERT_PIPELINE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "lxmert-pipeline")
    return Path(base) / "detector"


@dataclass(frozen=True)
class ExtractorSpec:
    """Everything a worker needs to build the same detector. `config` is a full detector
    config dict (preset plus overrides, or a checkpoint's); `weights` a file/dir or "random"."""
    config: dict
    weights: str
    weights_sha256: str
    device: str = "cpu"
    autocast: str | None = None      # None | "bf16" | "fp16"
    seed: int = 0                    # for --weights random: every worker builds the same model

    def detector_config(self):
        from detector.config import DetectorConfig

        return DetectorConfig.from_dict(self.config)

    def store_metadata(self, feature_dtype: str = "float16") -> StoreMetadata:
        cfg = self.detector_config()
        return StoreMetadata(detector=cfg.name, detector_config=cfg.to_dict(),
                             weights_sha256=self.weights_sha256, box_rule=dict(cfg.to_dict()["selection"]),
                             feature_dim=cfg.feature_dim, num_objects=cfg.roi_heads.num_classes,
                             num_attributes=cfg.roi_heads.num_attributes, feature_dtype=feature_dtype)


def resolve_spec(preset: str, weights: str | None, *, device: str = "cpu", autocast: str | None = None,
                 selection: dict[str, Any] | None = None, vocab_dir: str | None = None) -> ExtractorSpec:
    """CLI arguments -> spec; every user mistake becomes one PipelineError line."""
    from detector.checkpoint import CheckpointError, checkpoint_config, weights_file
    from detector.config import preset as load_preset

    try:
        cfg = load_preset(preset)
    except ValueError as err:
        raise PipelineError(str(err)) from None
    if weights is None:
        if preset != "vg-r101-c4":
            raise PipelineError(f"preset {preset!r} has no published weights: pass --weights DIR (a checkpoint "
                                f"from `lxmert-pipeline train-detector`) or --weights random (tests only)")
        candidate = weights_cache_dir() / WEIGHTS_FILE
        if not candidate.is_file():
            raise PipelineError(f"no weights for vg-r101-c4: put {WEIGHTS_FILE} at {candidate} or pass --weights PATH "
                                f"(nothing is downloaded; get {WEIGHTS_SOURCE})")
        weights = str(candidate)
    if weights == "random":
        sha = "random"
    else:
        path = Path(weights)
        if not path.exists():
            raise PipelineError("weights file not found", path)
        try:
            saved = checkpoint_config(path)
        except (ValueError, TypeError) as err:
            raise PipelineError(f"bad detector config beside the weights: {err}", path) from None
        if saved is not None:
            if saved.name != cfg.name:
                log.info("using the detector config saved with %s (%s), not preset %s", path, saved.name, preset)
            cfg = saved
        try:
            sha = file_sha256(weights_file(path))
        except CheckpointError as err:
            raise PipelineError(str(err)) from None
    if vocab_dir is not None:
        objects, attributes = Path(vocab_dir) / "objects_vocab.txt", Path(vocab_dir) / "attributes_vocab.txt"
        if not objects.is_file():
            raise PipelineError("objects_vocab.txt not found", objects.parent)
        cfg = cfg.with_vocab(objects, attributes if attributes.is_file() else None)
    if selection:
        cfg = cfg.replace(selection={k: v for k, v in selection.items() if v is not None})
    try:
        cfg.selection.validate()
    except ValueError as err:
        raise PipelineError(str(err)) from None
    if autocast is not None and autocast not in AUTOCAST:
        raise PipelineError(f"--autocast must be bf16 or fp16, not {autocast!r}")
    return ExtractorSpec(config=cfg.to_dict(), weights=weights, weights_sha256=sha, device=device,
                         autocast=autocast)


def init_random_(model, seed: int) -> None:
    """A deterministic random init that keeps a 100-layer FrozenBN ResNet finite: MSRA fill
    for convs (detectron2's c2_msra_fill) and the last norm of each residual branch at 0.2."""
    import torch

    from detector.backbone import BottleneckBlock

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if p.ndim == 4:
                fan_out = p.shape[0] * p.shape[2] * p.shape[3]
                p.copy_(torch.randn(p.shape, generator=gen) * (2.0 / fan_out) ** 0.5)
            elif p.ndim == 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.01)
            elif name.endswith("bias"):
                p.zero_()
        for module in model.modules():
            if isinstance(module, BottleneckBlock):
                module.conv3.norm.weight.fill_(0.2)


class Extractor:
    """The loaded detector of a spec, ready for `extract_shard` (eval mode, norms folded)."""

    def __init__(self, spec: ExtractorSpec, fold_norms: bool = True):
        import torch

        from detector.checkpoint import CheckpointError, load_weights
        from detector.rcnn import GeneralizedRCNN

        self.spec = spec
        self.cfg = spec.detector_config()
        model = GeneralizedRCNN(self.cfg)
        if spec.weights == "random":
            init_random_(model, spec.seed)
        else:
            try:
                load_weights(model, spec.weights)
            except CheckpointError as err:
                raise PipelineError(str(err)) from None
        model.eval()
        if fold_norms:
            model.fold_norms_()
        if spec.device.startswith("cuda") and not torch.cuda.is_available():
            raise PipelineError(f"--device {spec.device}: torch sees no CUDA device on this worker")
        self.device = torch.device(spec.device)
        self.model = model.to(self.device)
        self.autocast_dtype = getattr(torch, AUTOCAST[spec.autocast]) if spec.autocast else None

    def __call__(self, prepared: list, timings: dict | None = None):
        from detector.preprocess import pad_batch

        batch, sizes = pad_batch([p.tensor for p in prepared])
        return self.model.extract(batch.to(self.device, non_blocking=True), sizes, [p.scale for p in prepared],
                                  [p.original_size for p in prepared], autocast_dtype=self.autocast_dtype,
                                  timings=timings)


@dataclass
class ShardResult:
    index: int
    info: ShardInfo
    num_images: int
    failures: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def _load(entry: ImageEntry, input_cfg):
    from detector.preprocess import prepare_image

    try:
        return prepare_image(decode_image(entry.path), input_cfg)
    except ImageDecodeError as err:
        return err
    except Exception as err:  # noqa: BLE001 - e.g. an image too small to resize
        return ImageDecodeError(f"could not prepare image: {type(err).__name__}: {err}")


def prepared_images(entries: Sequence[ImageEntry], input_cfg, threads: int, read_ahead: int) -> Iterator[tuple]:
    """(entry, PreparedImage | ImageDecodeError) in input order, decoded by `threads` threads
    at most `read_ahead` images ahead of the consumer (bounded memory)."""
    if threads <= 0:
        for entry in entries:
            yield entry, _load(entry, input_cfg)
        return
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode") as pool:
        it = iter(entries)
        pending = collections.deque((e, pool.submit(_load, e, input_cfg)) for e in itertools.islice(it, read_ahead))
        while pending:
            entry, fut = pending.popleft()
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(_load, nxt, input_cfg)))
            yield entry, fut.result()


def regions_to_features(entry: ImageEntry, prepared, regions, feature_dtype: str) -> ImageFeatures:
    H, W = prepared.original_size
    return ImageFeatures(
        image_id=entry.image_id, width=W, height=H,
        boxes=regions.boxes.cpu().numpy().astype(np.float32),
        features=regions.features.cpu().numpy().astype(feature_dtype),
        objects_id=regions.objects_id.cpu().numpy().astype(np.int32),
        objects_conf=regions.objects_conf.cpu().numpy().astype(np.float32),
        attrs_id=regions.attrs_id.cpu().numpy().astype(np.int32),
        attrs_conf=regions.attrs_conf.cpu().numpy().astype(np.float32))


def extract_images(entries: Sequence[ImageEntry], extractor: Extractor, *, batch_size: int = 1,
                   feature_dtype: str = "float16", decode_threads: int = 2, timings: dict | None = None,
                   ) -> tuple[list[ImageFeatures], list[dict]]:
    """-> (features of the images that worked, in input order; failure records). `timings`
    accumulates the detector's seconds per part (backbone, rpn, ...)."""
    done: list[ImageFeatures] = []
    failures: list[dict] = []
    batch: list[tuple] = []

    def run(items: list[tuple]) -> None:
        try:
            regions = extractor([p for _, p in items], timings)
        except Exception as err:  # noqa: BLE001 - one image's problem must not sink the shard
            if len(items) > 1:
                for item in items:
                    run([item])
                return
            entry = items[0][0]
            failures.append({"image": entry.path, "image_id": entry.image_id,
                             "reason": f"detector failed: {type(err).__name__}: {err}".splitlines()[0]})
            return
        for (entry, prepared), r in zip(items, regions):
            image = regions_to_features(entry, prepared, r, feature_dtype)
            problem = nonfinite_problem(image, feature_dtype)
            if problem:  # stored, it would turn a training loss into NaN far from here
                failures.append({"image": entry.path, "image_id": entry.image_id,
                                 "reason": f"the detector's output is not finite: {problem}"})
                continue
            done.append(image)

    read_ahead = max(2 * batch_size, decode_threads + batch_size)
    for entry, prepared in prepared_images(entries, extractor.cfg.input, decode_threads, read_ahead):
        if isinstance(prepared, ImageDecodeError):
            failures.append({"image": entry.path, "image_id": entry.image_id, "reason": str(prepared)})
            continue
        batch.append((entry, prepared))
        if len(batch) == batch_size:
            run(batch)
            batch = []
    if batch:
        run(batch)
    return done, failures


def extract_shard(index: int, entries: Sequence[ImageEntry], out_dir: str | os.PathLike, extractor: Extractor, *,
                  batch_size: int = 1, feature_dtype: str = "float16", decode_threads: int = 2,
                  add_to_existing: bool = False) -> ShardResult:
    """Extract `entries` and write `out_dir/shard-<index>.parquet` (atomically).

    `add_to_existing`: the shard exists and `entries` are images missing from it (they
    failed before); its rows are kept as they are and the new ones join them in image-id
    order, the order a first extraction writes, so only the retried images are detected.
    """
    from pipeline.features import shard_name

    t0 = time.perf_counter()
    images, failures = extract_images(entries, extractor, batch_size=batch_size, feature_dtype=feature_dtype,
                                      decode_threads=decode_threads)
    path = Path(out_dir) / shard_name(index)
    metadata = extractor.spec.store_metadata(feature_dtype)
    if add_to_existing:
        images = sorted(_stored_rows(path, metadata) + images, key=lambda im: im.image_id)
    # written even when every image failed (0 rows): the shard is done and a re-run skips it
    info = write_shard(path, images, metadata)
    return ShardResult(index, info, len(entries), failures, time.perf_counter() - t0)


def _stored_rows(path: Path, metadata: StoreMetadata) -> list[ImageFeatures]:
    import pyarrow.parquet as pq

    from pipeline.features.shard import rows_from_batch

    return rows_from_batch(pq.read_table(path), metadata)


def spec_for_store(metadata: StoreMetadata, store_dir: str | os.PathLike, detector: str | None = None, *,
                   device: str = "cpu") -> ExtractorSpec:
    """The detector that made a store, to extract new images exactly as the store's were.

    `detector`: its weights (a file, or a train-detector run / checkpoint folder); default: the
    folder a `run`/`demo` graph puts beside the store (`../detector/final`) or the weights
    cache, taken only when its sha256 is the one the store records. A store made with
    `--weights random` is re-made from the same seed.
    """
    from detector.checkpoint import WEIGHTS_NAME, CheckpointError, checkpoint_config, weights_file

    if metadata.weights_sha256 == "random":
        return ExtractorSpec(config=metadata.detector_config, weights="random", weights_sha256="random", device=device)
    if not metadata.detector_config.get("resnet"):
        raise PipelineError(f"this store's features were not made by a detector ({metadata.detector!r}); "
                            "pass --detector WEIGHTS to extract new images", store_dir)

    if detector is None:
        candidates = [Path(store_dir).resolve().parent / "detector" / "final" / WEIGHTS_NAME,
                      weights_cache_dir() / WEIGHTS_FILE]
        found = next((c for c in candidates if c.is_file() and file_sha256(c) == metadata.weights_sha256), None)
        if found is None:
            raise PipelineError(f"cannot find the detector weights this store was made with (sha256 "
                                f"{metadata.weights_sha256[:12]}...); pass --detector WEIGHTS", store_dir)
        target = found
    else:
        folder = Path(detector)
        if (folder / "final").is_dir():   # a train-detector run stands for its final checkpoint
            folder = folder / "final"
        try:
            target = weights_file(folder)
        except CheckpointError as err:
            raise PipelineError(str(err)) from None
        if not target.is_file():
            raise PipelineError("detector weights not found", detector)
    sha = file_sha256(target)
    if sha != metadata.weights_sha256:
        log.warning("%s is not the detector the run's features came from (sha256 %s..., store %s...): the "
                    "answers may suffer", target, sha[:12], metadata.weights_sha256[:12])
    saved = checkpoint_config(target)
    if saved is not None and (saved.feature_dim != metadata.feature_dim
                              or saved.roi_heads.num_classes != metadata.num_objects):
        raise PipelineError(f"this detector makes {saved.feature_dim}-dim features over {saved.roi_heads.num_classes} "
                            f"classes; the run was trained on {metadata.feature_dim}-dim over {metadata.num_objects}",
                            target)
    return ExtractorSpec(config=metadata.detector_config, weights=str(target), weights_sha256=sha, device=device)


def extract_files(paths: Sequence[str | os.PathLike], spec: ExtractorSpec | Extractor,
                  feature_dtype: str = "float32", timings: dict | None = None) -> list[ImageFeatures]:
    """The regions of a few image files, in order; an unreadable image is one clear error.
    `spec` may be an `Extractor` already loaded (a server keeps one for all its requests)."""
    extractor = spec if isinstance(spec, Extractor) else Extractor(spec)
    entries = [ImageEntry(f"{Path(p).stem}-{i}", str(p)) for i, p in enumerate(paths)]
    images, failures = extract_images(entries, extractor, feature_dtype=feature_dtype, decode_threads=0,
                                      timings=timings)
    if failures:
        raise PipelineError(failures[0]["reason"], failures[0]["image"])
    return images

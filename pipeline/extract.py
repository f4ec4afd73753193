"""The extraction stage in one process: a list of images -> one feature-store shard.

`ExtractorSpec` says which detector (preset or saved config, weights, device, precision);
it is small and picklable, so a Dask worker can build the model from it once.
`Extractor` is the loaded model. `extract_shard` runs `extract_images` and writes one
Parquet shard atomically through `pipeline.features.write_shard`. Images that cannot be
decoded (or on which the detector fails) are returned as failures with a reason; the
others still make the shard. Nothing here knows about Dask.

`extract_images` is a three-stage pipeline, the same code on every device:
1. decode threads (bounded read-ahead): on a CPU they decode (PIL) and prepare (resize,
   mean) each image; on CUDA they read the file, send JPEGs nvJPEG can decode as bytes
   (pipeline/images.py) and decode the rest with PIL into pinned memory;
2. the calling thread, per batch: on CUDA the batch's JPEGs are decoded in one nvJPEG call
   and every image is uploaded (pinned, non-blocking) and prepared on the device; then the
   padded batch goes through the detector (`GeneralizedRCNN.extract_batch`, fixed shapes),
   its regions are packed into one byte buffer on the device and copied to the host in ONE
   transfer (features already in the stored dtype), queued behind the batch's work;
3. one writer thread (`OrderedWriter`) turns each transferred batch into store rows, in
   batch order, while the calling thread queues the next batch; at most two batches wait
   for it. An error there is raised in the calling thread (at a later hand-over or at the
   end), before the shard is written, so no shard is ever written from part of its rows;
   the write itself stays one atomic `write_shard` after the last batch.

On CUDA the extractor also runs the model in channels_last with cuDNN autotuning, batches
padded to multiples of 32 so the autotuner sees few shapes (`Extractor`).
"""

from __future__ import annotations

import collections
import io
import itertools
import logging
import math
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from pipeline.errors import PipelineError
from pipeline.features import ImageFeatures, ShardInfo, StoreMetadata, write_shard
from pipeline.features.shard import file_sha256, nonfinite_problem
from pipeline.images import (DeviceJpeg, ImageDecodeError, ImageEntry, decode_image, decode_image_data,
                             decode_jpegs_on_device, jpeg_for_device, read_image_file)

log = logging.getLogger(__name__)

WEIGHTS_FILE = "faster_rcnn_from_caffe_attr.pkl"
WEIGHTS_SOURCE = ("faster_rcnn_from_caffe_attr.pkl from airsplay/py-bottom-up-attention (README, "
                  "http://nlp.cs.unc.edu/models/faster_rcnn_from_caffe_attr.pkl), or pytorch_model.bin "
                  "from the Hugging Face repo unc-nlp/frcnn-vg-finetuned")
AUTOCAST = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16"}
FEATURE_DTYPES = ("float16", "float32")
# batch sides on CUDA are rounded up to this (detectron2's SIZE_DIVISIBILITY): cuDNN's
# autotuner measures each new input shape once, and 600/1000 inputs then make a few dozen
CUDA_SIZE_DIVISIBILITY = 32


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
    """The loaded detector of a spec, ready for `extract_shard` (eval mode, norms folded).

    On CUDA (decided by the device, not by an option of the spec: the spec names the
    detector and its numbers, and these change no result, only speed):
    - the model and its input batches are channels_last, the layout cuDNN's tensor-core
      convolutions use for bf16/fp16 without transposing each layer's input (on a CPU oneDNN
      reorders to its own blocked layout either way; NCHW stays, as measured so far);
    - `torch.backends.cudnn.benchmark` is on for the process (a Dask worker's detector owns
      its GPU): cuDNN times its algorithms once per input shape, and batches are padded to
      multiples of 32 so the shapes repeat (res5's input is (RoIs, 1024, 14, 14), the same
      for every full batch). A CPU has no autotuner, and padding would only add work;
    - images are prepared (float, BGR, mean, resize) on the device from their uint8 pixels
      (`prepare_on_device`: a quarter of the bytes to upload, and the GPU's time), and JPEGs
      are decoded there by nvJPEG (`jpeg_on_device`, default: when it works on this device).
    Both can be asked for on a CPU, where torchvision's decoder is libjpeg-turbo (PIL's
    pixels exactly): the CUDA path's code then runs, and is tested, on a CPU.
    """

    def __init__(self, spec: ExtractorSpec, fold_norms: bool = True, *, prepare_on_device: bool | None = None,
                 jpeg_on_device: bool | None = None):
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
        on_cuda = self.device.type == "cuda"
        self.memory_format = torch.channels_last if on_cuda else torch.contiguous_format
        self.size_divisibility = CUDA_SIZE_DIVISIBILITY if on_cuda else 1
        if on_cuda:
            torch.backends.cudnn.benchmark = True
        self.model = model.to(self.device, memory_format=self.memory_format)
        self.autocast_dtype = getattr(torch, AUTOCAST[spec.autocast]) if spec.autocast else None
        self.prepare_on_device = on_cuda if prepare_on_device is None else bool(prepare_on_device)
        if jpeg_on_device is None:
            jpeg_on_device = on_cuda and nvjpeg_works(self.device)
        if jpeg_on_device and not self.prepare_on_device:
            raise ValueError("jpeg_on_device needs prepare_on_device: a JPEG decoded on the device is prepared there")
        self.jpeg_on_device = bool(jpeg_on_device)

    def extract_batch(self, prepared: list, timings: dict | None = None):
        """PreparedImages (on any device) -> `detector.rcnn.BatchRegions` on the model's device."""
        from detector.preprocess import pad_batch

        batch, sizes = pad_batch([p.tensor.to(self.device, non_blocking=True) for p in prepared],
                                 self.size_divisibility)
        return self.model.extract_batch(batch.contiguous(memory_format=self.memory_format), sizes,
                                        [p.scale for p in prepared], [p.original_size for p in prepared],
                                        autocast_dtype=self.autocast_dtype, timings=timings)

    def __call__(self, prepared: list, timings: dict | None = None):
        """PreparedImages -> one `detector.rcnn.Regions` per image."""
        return self.extract_batch(prepared, timings).split()


def nvjpeg_works(device) -> bool:
    """Whether torchvision decodes a JPEG with nvJPEG on `device` (a build without it, or a
    driver problem, leaves every JPEG to PIL; said once in the log)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 60)).save(buf, format="JPEG")
    try:
        ok = decode_jpegs_on_device([jpeg_for_device(buf.getvalue())], device)[0] is not None
    except Exception as err:  # noqa: BLE001 - any failure means: decode with PIL
        log.warning("nvJPEG does not work on %s (%s: %s); JPEGs are decoded on the CPU",
                    device, type(err).__name__, str(err).splitlines()[0] if str(err) else "")
        return False
    if not ok:
        log.warning("nvJPEG decoded a test JPEG wrongly on %s; JPEGs are decoded on the CPU", device)
    return ok


@dataclass
class ShardResult:
    index: int
    info: ShardInfo
    num_images: int
    failures: list[dict] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class LoadedImage:
    """What a decode thread hands over for one image: prepared (CPU path), or, when the
    extractor prepares on its device, the decoded pixels (pinned for CUDA) or the JPEG the
    device will decode."""
    prepared: Any = None          # detector.preprocess.PreparedImage
    pixels: Any = None            # (H, W, 3) uint8 torch tensor
    jpeg: DeviceJpeg | None = None


def _prepare_failure(err: Exception) -> ImageDecodeError:
    return ImageDecodeError(f"could not prepare image: {type(err).__name__}: {err}")


def _host_pixels(rgb: np.ndarray, pin: bool):
    """(H, W, 3) uint8 as a torch tensor: copied once into pinned memory when `pin`, else
    wrapped (copied only if read-only, as PIL's arrays are)."""
    import torch

    if pin:
        pixels = torch.empty(rgb.shape, dtype=torch.uint8, pin_memory=True)
        pixels.numpy()[...] = rgb
        return pixels
    return torch.from_numpy(rgb if rgb.flags.writeable else rgb.copy())


def load_image(entry: ImageEntry, input_cfg, *, prepare: bool = True, jpeg_on_device: bool = False,
               pin: bool = False) -> LoadedImage | ImageDecodeError:
    """One image's decode-thread work (see the module docstring); failures as a value.
    `prepare`: decode and prepare here (CPU path); else read it and hand over the JPEG for
    the device (`jpeg_on_device`, when the device's decoder takes it) or PIL's pixels,
    pinned when `pin` (for a non-blocking upload)."""
    from detector.preprocess import prepare_image

    try:
        if prepare:
            return LoadedImage(prepared=prepare_image(decode_image(entry.path), input_cfg))
        data = read_image_file(entry.path)
        jpeg = jpeg_for_device(data) if jpeg_on_device else None
        if jpeg is not None:
            return LoadedImage(jpeg=jpeg)
        return LoadedImage(pixels=_host_pixels(decode_image_data(data), pin))
    except ImageDecodeError as err:
        return err
    except Exception as err:  # noqa: BLE001 - e.g. an image too small to resize
        return _prepare_failure(err)


def loaded_images(entries: Sequence[ImageEntry], load: Callable[[ImageEntry], Any], threads: int,
                  read_ahead: int) -> Iterator[tuple]:
    """(entry, load(entry)) in input order, computed by `threads` threads at most
    `read_ahead` images ahead of the consumer (bounded memory); inline when threads is 0."""
    if threads <= 0:
        for entry in entries:
            yield entry, load(entry)
        return
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode") as pool:
        it = iter(entries)
        pending = collections.deque((e, pool.submit(load, e)) for e in itertools.islice(it, read_ahead))
        while pending:
            entry, fut = pending.popleft()
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(load, nxt)))
            yield entry, fut.result()


def prepare_on_device(loaded: list[LoadedImage], extractor: Extractor) -> list:
    """The calling thread's part of decoding when the extractor prepares on its device: the
    batch's JPEGs in one `decode_jpeg` call on the device (PIL for those it refuses), every
    image uploaded (non-blocking from pinned memory) and prepared there.
    -> per image a PreparedImage or an ImageDecodeError."""
    from detector.preprocess import prepare_chw

    pin = extractor.device.type == "cuda"

    jpegs = [i for i, item in enumerate(loaded) if item.jpeg is not None]
    decoded = dict(zip(jpegs, decode_jpegs_on_device([loaded[i].jpeg for i in jpegs], extractor.device)))
    out = []
    for i, item in enumerate(loaded):
        if item.prepared is not None:
            out.append(item.prepared)
            continue
        try:
            chw = decoded.get(i)
            if chw is None:
                pixels = item.pixels
                if pixels is None:     # the device's decoder refused it: PIL decides, with PIL's reasons
                    pixels = _host_pixels(decode_image_data(item.jpeg.data.numpy().tobytes()), pin)
                chw = pixels.to(extractor.device, non_blocking=True).permute(2, 0, 1)
            out.append(prepare_chw(chw, extractor.cfg.input))
        except ImageDecodeError as err:
            out.append(err)
        except Exception as err:  # noqa: BLE001 - as load_image
            out.append(_prepare_failure(err))
    return out


def regions_to_features(entry: ImageEntry, prepared, regions, feature_dtype: str) -> ImageFeatures:
    """One image's `detector.rcnn.Regions` as a store row (the per-image path; `unpack_rows`
    is the batched one and gives the same rows)."""
    H, W = prepared.original_size
    return ImageFeatures(
        image_id=entry.image_id, width=W, height=H,
        boxes=regions.boxes.cpu().numpy().astype(np.float32),
        features=regions.features.cpu().numpy().astype(feature_dtype),
        objects_id=regions.objects_id.cpu().numpy().astype(np.int32),
        objects_conf=regions.objects_conf.cpu().numpy().astype(np.float32),
        attrs_id=regions.attrs_id.cpu().numpy().astype(np.int32),
        attrs_conf=regions.attrs_conf.cpu().numpy().astype(np.float32))


# -- one transfer per batch ------------------------------------------------------------------

@dataclass
class PackedRegions:
    """A batch's regions as one byte buffer on the host (pinned, filled by a queued copy on
    CUDA; `wait` blocks until it has landed), plus what is needed to read it back. The
    device-side `regions` stay referenced only to explain a non-finite row."""
    host: Any                                 # 1-D uint8 torch tensor
    layout: list[tuple[str, str, tuple]]      # (name, numpy dtype, shape) in buffer order
    ready: Any = None                         # torch.cuda.Event, None when nothing was copied
    regions: Any = None                       # detector.rcnn.BatchRegions

    def wait(self) -> None:
        if self.ready is not None:
            self.ready.synchronize()

    def arrays(self) -> dict[str, np.ndarray]:
        """Views of the buffer by name (valid while `host` lives)."""
        buf, out, offset = self.host.numpy(), {}, 0
        for name, dtype, shape in self.layout:
            size = math.prod(shape) * np.dtype(dtype).itemsize
            out[name] = buf[offset:offset + size].view(dtype).reshape(shape)
            offset += size
        return out


def pack_regions(regions, feature_dtype: str) -> PackedRegions:
    """`BatchRegions` -> one uint8 buffer on the host, in ONE device-to-host copy: counts,
    boxes, scores and ids as stored (int32/float32), features converted to the stored dtype
    on the device (float16 halves the bytes; the conversion rounds as numpy's does). On a
    CPU the buffer is the packed tensor itself."""
    import torch

    parts = [("count", "int32", regions.count.to(torch.int32)),
             ("boxes", "float32", regions.boxes.float()),
             ("objects_conf", "float32", regions.objects_conf.float()),
             ("attrs_conf", "float32", regions.attrs_conf.float()),
             ("objects_id", "int32", regions.objects_id.to(torch.int32)),
             ("attrs_id", "int32", regions.attrs_id.to(torch.int32)),
             # last: the only part whose size may not be a multiple of 4 bytes
             ("features", feature_dtype, regions.features.to(getattr(torch, feature_dtype)))]
    packed = torch.cat([t.contiguous().view(torch.uint8).reshape(-1) for _, _, t in parts])
    layout = [(name, dtype, tuple(t.shape)) for name, dtype, t in parts]
    if packed.device.type != "cuda":
        return PackedRegions(packed, layout, None, regions)
    host = torch.empty(packed.numel(), dtype=torch.uint8, pin_memory=True)
    host.copy_(packed, non_blocking=True)
    ready = torch.cuda.Event()
    ready.record(torch.cuda.current_stream(packed.device))
    return PackedRegions(host, layout, ready, regions)


def unpack_rows(packed: PackedRegions, items: list[tuple], feature_dtype: str
                ) -> tuple[list[ImageFeatures], list[tuple[int, dict]]]:
    """items: (position, entry, original (height, width)) per image of the batch -> (store
    rows, (position, failure) for images whose output is not finite). Rows own their arrays."""
    packed.wait()
    a = packed.arrays()
    rows, failures = [], []
    for i, (position, entry, (H, W)) in enumerate(items):
        n = int(a["count"][i])
        image = ImageFeatures(image_id=entry.image_id, width=W, height=H, boxes=a["boxes"][i, :n].copy(),
                              features=a["features"][i, :n].copy(), objects_id=a["objects_id"][i, :n].copy(),
                              objects_conf=a["objects_conf"][i, :n].copy(), attrs_id=a["attrs_id"][i, :n].copy(),
                              attrs_conf=a["attrs_conf"][i, :n].copy())
        problem = nonfinite_problem(image, feature_dtype)
        if problem:  # stored, it would turn a training loss into NaN far from here
            if packed.regions is not None:   # say it from the float32 values (overflow or NaN)
                full = packed.regions.features[i, :n].float().cpu().numpy()
                problem = nonfinite_problem(ImageFeatures(image.image_id, W, H, image.boxes, full, image.objects_id,
                                                          image.objects_conf, image.attrs_id, image.attrs_conf),
                                            feature_dtype)
            failures.append((position, {"image": entry.path, "image_id": entry.image_id,
                                        "reason": f"the detector's output is not finite: {problem}"}))
            continue
        rows.append(image)
    return rows, failures


class OrderedWriter:
    """One thread that runs jobs in submission order while the caller goes on (the writer
    of store rows). At most `max_pending` jobs wait (`submit` blocks for the oldest); the
    first job that raises stops the rest, and its exception is raised in the caller by the
    first `submit` that finds it finished, or by `close`. Always `close` (or `abort`): the
    thread ends there."""

    def __init__(self, max_pending: int = 2, name: str = "rows"):
        self.max_pending = max_pending
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self.pending: collections.deque[Future] = collections.deque()
        self.results: list = []
        self.failed = False            # set in the writer thread: later jobs are skipped
        self.error: BaseException | None = None

    def _run(self, job: Callable[[], Any]):
        if self.failed:          # a job before this one raised: its error is what the caller sees
            return None
        try:
            return job()
        except BaseException:
            self.failed = True
            raise

    def _take_oldest(self) -> None:
        try:
            self.results.append(self.pending.popleft().result())
        except BaseException as err:
            self.error = err
            raise

    def submit(self, job: Callable[[], Any]) -> None:
        if self.error is not None:
            raise self.error
        while self.pending and self.pending[0].done():     # a finished job's error surfaces now
            self._take_oldest()
        while len(self.pending) >= self.max_pending:
            self._take_oldest()
        self.pending.append(self.pool.submit(self._run, job))

    def close(self) -> list:
        """Every job's result, in order; raises the first job's error."""
        try:
            while self.pending and self.error is None:
                self._take_oldest()
            if self.error is not None:
                raise self.error
        finally:
            self.abort()
        return self.results

    def abort(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def extract_images(entries: Sequence[ImageEntry], extractor: Extractor, *, batch_size: int = 1,
                   feature_dtype: str = "float16", decode_threads: int = 2, timings: dict | None = None,
                   ) -> tuple[list[ImageFeatures], list[dict]]:
    """-> (features of the images that worked, in input order; failure records, in input
    order). `timings` accumulates the detector's seconds per part (backbone, rpn, ...)."""
    if feature_dtype not in FEATURE_DTYPES:
        raise PipelineError(f"feature dtype must be float16 or float32, not {feature_dtype!r}")
    failures: list[tuple[int, dict]] = []
    writer = OrderedWriter()

    def failed(position: int, entry: ImageEntry, reason: str) -> None:
        failures.append((position, {"image": entry.path, "image_id": entry.image_id, "reason": reason}))

    def detect(items: list[tuple]) -> None:
        try:
            packed = pack_regions(extractor.extract_batch([p for _, _, p in items], timings), feature_dtype)
        except Exception as err:  # noqa: BLE001 - one image's problem must not sink the shard
            if len(items) > 1:
                for item in items:
                    detect([item])
                return
            position, entry, _ = items[0]
            failed(position, entry, f"detector failed: {type(err).__name__}: {err}".splitlines()[0])
            return
        # the writer keeps what a row needs, not the batch's prepared images (device memory)
        rows_of = [(position, entry, p.original_size) for position, entry, p in items]
        writer.submit(lambda: unpack_rows(packed, rows_of, feature_dtype))

    def run(batch: list[tuple]) -> None:
        if extractor.prepare_on_device:
            prepared = prepare_on_device([loaded for _, _, loaded in batch], extractor)
        else:
            prepared = [loaded.prepared for _, _, loaded in batch]
        items = []
        for (position, entry, _), p in zip(batch, prepared):
            if isinstance(p, ImageDecodeError):
                failed(position, entry, str(p))
            else:
                items.append((position, entry, p))
        if items:
            detect(items)

    def load(entry: ImageEntry):
        return load_image(entry, extractor.cfg.input, prepare=not extractor.prepare_on_device,
                          jpeg_on_device=extractor.jpeg_on_device, pin=extractor.device.type == "cuda")

    read_ahead = max(2 * batch_size, decode_threads + batch_size)
    batch: list[tuple] = []
    try:
        for position, (entry, loaded) in enumerate(loaded_images(entries, load, decode_threads, read_ahead)):
            if isinstance(loaded, ImageDecodeError):
                failed(position, entry, str(loaded))
                continue
            batch.append((position, entry, loaded))
            if len(batch) == batch_size:
                run(batch)
                batch = []
        if batch:
            run(batch)
        results = writer.close()
    finally:
        writer.abort()
    done = [row for rows, _ in results for row in rows]
    failures += [f for _, batch_failures in results for f in batch_failures]
    return done, [record for _, record in sorted(failures, key=lambda f: f[0])]


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

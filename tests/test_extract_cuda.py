"""Extraction on a CUDA GPU against the same extraction on the CPU (skipped without a GPU).

What the GPU path changes and what each test holds it to:
- fp32 on the GPU (IEEE fp32, channels_last, cuDNN autotuning, batches padded to multiples
  of 32, the fixed-shape box selection) saves the CPU's regions: the same boxes (to 0.05 px),
  object and attribute ids, features within 1e-4 (tiny) / 1e-3 (vg-r101-c4, 100+ layers) of
  their largest value: only the order of floating-point sums differs;
- on the GPU, the fixed-shape selection saves exactly what the pruned one does;
- bf16 features on the same proposals: mean cosine >= 0.999 with fp32 over the regions whose
  fp32 feature is not zero (measured on a CPU with random weights: 0.99999), and at least
  half the fp32 boxes have a bf16 box at IoU >= 0.7
  (random weights move proposals more than trained ones; measured 0.72-0.81 on a CPU);
- nvJPEG against PIL: the same size and orientation, mean |difference| < 2 of 255 per value
  (torchvision's own bound for its GPU decoder);
- the whole `extract` stage on cuda writes the CPU's store (same images, failures, boxes,
  features within float16 storage), and with nvJPEG on JPEGs still the same images/failures;
- the selection, the packing and the one device-to-host copy never wait for the GPU; the
  whole forward waits only for the RPN's NMS (one per image) and the proposal counts.
"""

from __future__ import annotations

import dataclasses
import io
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.extract import Extractor, extract_images, pack_regions, resolve_spec
from pipeline.images import decode_image_data, decode_jpegs_on_device, discover_images, jpeg_for_device

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from bench_extract import blocky_photo  # noqa: E402  (the benchmark's photos, one recipe)

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _photo(h: int, w: int, seed: int) -> np.ndarray:
    return blocky_photo(h, w, np.random.default_rng(seed))


def _write(folder, kind: str, sizes) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, (h, w) in enumerate(sizes):
        options = {"quality": 90} if kind == "jpg" else {}
        Image.fromarray(_photo(h, w, i)).save(folder / f"im{i:02d}.{kind}", **options)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.png").write_text("not an image")


def _spec(name: str, device: str, autocast: str | None = None, **sections):
    spec = resolve_spec(name, "random", device=device, autocast=autocast)
    if sections:
        spec = dataclasses.replace(spec, config=spec.detector_config().replace(**sections).to_dict())
    return spec


def _extractor(spec, **kw) -> Extractor:
    """The spec's model with the RPN head initialised as detectron2 does (std 0.01): with the
    MSRA fill of random weights the RPN keeps a dozen proposals and res5 would hardly run."""
    extractor = Extractor(spec, **kw)
    gen = torch.Generator().manual_seed(0)
    head = extractor.model.proposal_generator.rpn_head
    with torch.no_grad():
        for layer in (head.conv, head.objectness_logits, head.anchor_deltas):
            layer.weight.copy_((torch.randn(layer.weight.shape, generator=gen) * 0.01).to(layer.weight))
            layer.bias.zero_()
    return extractor


SMALL_VG = {"input": {"min_size": 240, "max_size": 400}}
SIZES = [(480, 640), (600, 800), (640, 480), (600, 1000)]


@pytest.mark.parametrize("name,sections,feature_tol", [("tiny", {}, 1e-4), ("vg-r101-c4", SMALL_VG, 1e-3)])
def test_fp32_on_the_gpu_saves_the_cpu_regions(tmp_path, name, sections, feature_tol):
    _write(tmp_path, "png", SIZES[:2] if name == "vg-r101-c4" else SIZES)
    entries = [e for e in discover_images(tmp_path) if e.image_id.startswith("im")]
    cpu = _extractor(_spec(name, "cpu", **sections))
    gpu = _extractor(_spec(name, "cuda", **sections))
    assert gpu.model._channels_last() and gpu.size_divisibility == 32
    want, _ = extract_images(entries, cpu, batch_size=2, feature_dtype="float32")
    got, _ = extract_images(entries, gpu, batch_size=2, feature_dtype="float32")
    assert [g.image_id for g in got] == [w.image_id for w in want]
    for g, w in zip(got, want):
        assert g.boxes.shape == w.boxes.shape, g.image_id
        np.testing.assert_allclose(g.boxes, w.boxes, atol=0.05, rtol=0)
        assert np.array_equal(g.objects_id, w.objects_id) and np.array_equal(g.attrs_id, w.attrs_id)
        assert np.abs(g.features - w.features).max() <= feature_tol * np.abs(w.features).max()
        np.testing.assert_allclose(g.objects_conf, w.objects_conf, atol=1e-4)


@pytest.mark.parametrize("selection", [{}, {"method": "max_class", "min_boxes": 10, "max_boxes": 36},
                                       {"min_boxes": 10, "max_boxes": 100}])
def test_fixed_shape_selection_on_the_gpu_equals_the_pruned_one(selection):
    from detector.preprocess import pad_batch, prepare_image

    gpu = _extractor(_spec("tiny", "cuda", selection=selection) if selection else _spec("tiny", "cuda"))
    prepared = [prepare_image(_photo(h, w, i), gpu.cfg.input) for i, (h, w) in enumerate(SIZES)]
    batch, sizes = pad_batch([p.tensor.cuda() for p in prepared], 32)
    args = (batch, sizes, [p.scale for p in prepared], [p.original_size for p in prepared])
    fixed = gpu.model.extract(*args, sync_free=True)
    pruned = gpu.model.extract(*args, sync_free=False)
    for a, b in zip(fixed, pruned):
        assert torch.equal(a.boxes, b.boxes) and torch.equal(a.features, b.features)
        assert torch.equal(a.objects_id, b.objects_id) and torch.equal(a.attrs_id, b.attrs_id)


def test_bf16_agrees_with_fp32_on_the_gpu():
    from torchvision.ops import box_iou

    from detector.device import ieee_fp32
    from detector.preprocess import pad_batch, prepare_image

    fp32 = _extractor(_spec("vg-r101-c4", "cuda", **SMALL_VG))
    bf16 = _extractor(_spec("vg-r101-c4", "cuda", "bf16", **SMALL_VG))
    prepared = [prepare_image(_photo(h, w, i), fp32.cfg.input) for i, (h, w) in enumerate(SIZES)]
    full, low = fp32.extract_batch(prepared).split(), bf16.extract_batch(prepared).split()
    matched = total = 0
    for f, b in zip(full, low):
        assert b.features.dtype == torch.float32 and torch.isfinite(b.features).all()
        total += len(f.boxes)
        matched += int((box_iou(f.boxes, b.boxes).max(dim=1).values >= 0.7).sum())
    # features on the same (fp32) proposals
    batch, sizes = pad_batch([p.tensor.cuda() for p in prepared], 32)
    model, low_model = fp32.model, bf16.model
    batch = batch.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), ieee_fp32(batch.device):
        res4 = model.backbone(batch, sizes)["res4"]
        rpn_out = model.proposal_generator.predict(res4, model.backbone.feature_sizes(sizes))
        proposals, _ = model.proposal_generator.find_top_proposals(rpn_out, sizes)
        feats32 = model.roi_heads.res5(model.roi_heads.pool(res4, proposals).contiguous(
            memory_format=torch.channels_last)).mean(dim=(2, 3))
        with torch.autocast("cuda", dtype=torch.bfloat16):
            res4_low = low_model.backbone(batch, sizes)["res4"]
            pooled = low_model.roi_heads.pool(res4_low, proposals).to(torch.bfloat16,
                                                                     memory_format=torch.channels_last)
            feats16 = low_model.roi_heads.res5(pooled).mean(dim=(2, 3), dtype=torch.float32)
    nonzero = feats32.norm(dim=1) > 0        # a cosine of two zero vectors (a dead RoI) says nothing
    cosine = torch.nn.functional.cosine_similarity(feats16[nonzero], feats32[nonzero], dim=1)
    print(f"bf16 vs fp32: mean cosine {float(cosine.mean()):.6f} (min {float(cosine.min()):.6f}), "
          f"{matched}/{total} fp32 boxes with a bf16 box at IoU >= 0.7")
    assert float(cosine.mean()) >= 0.999
    assert matched >= 0.5 * total


def _jpeg(rgb: np.ndarray, **save) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", **save)
    return buf.getvalue()


def test_nvjpeg_decodes_what_pil_decodes():
    photo = _photo(480, 640, 0)
    exif = Image.Exif()
    exif[274] = 6
    files = {"4:2:0": _jpeg(photo, quality=90), "4:4:4": _jpeg(photo, quality=95, subsampling=0),
             "4:2:2": _jpeg(photo, subsampling=1), "progressive": _jpeg(photo, progressive=True),
             "gray": _jpeg(photo[:, :, 0]), "exif 6": _jpeg(photo, exif=exif.tobytes()),
             "odd size": _jpeg(_photo(333, 517, 1))}
    jpegs = [jpeg_for_device(data) for data in files.values()]
    assert all(j is not None for j in jpegs)
    decoded = decode_jpegs_on_device(jpegs, torch.device("cuda"))
    for (kind, data), img in zip(files.items(), decoded):
        assert img is not None and img.is_cuda, kind
        pil = decode_image_data(data)
        got = img.permute(1, 2, 0).cpu().numpy()
        assert got.shape == pil.shape, kind
        diff = np.abs(got.astype(np.int16) - pil.astype(np.int16))
        print(f"nvJPEG vs PIL, {kind}: mean |diff| {diff.mean():.3f}, max {diff.max()}")
        assert diff.mean() < 2, kind


def _stores_equal(a, b, atol_boxes=0.05, feature_tol=1e-3):
    from pipeline.features import FeatureStore, read_failures

    sa, sb = FeatureStore(a), FeatureStore(b)
    assert sorted(sa.image_ids) == sorted(sb.image_ids)
    assert sorted(f["image_id"] for f in read_failures(a)) == sorted(f["image_id"] for f in read_failures(b))
    for image_id in sa.image_ids:
        x, y = sa.get(image_id), sb.get(image_id)
        assert x.boxes.shape == y.boxes.shape, image_id
        np.testing.assert_allclose(x.boxes, y.boxes, atol=atol_boxes, rtol=0)
        assert np.array_equal(x.objects_id, y.objects_id)
        fx, fy = x.features.astype(np.float32), y.features.astype(np.float32)
        assert np.abs(fx - fy).max() <= feature_tol * np.abs(fx).max() + 1e-3   # float16 storage


def test_the_extract_stage_on_cuda_writes_the_cpu_store(tmp_path):
    from pipeline.stages.extract import extract

    _write(tmp_path / "imgs", "png", SIZES * 2)
    for device in ("cpu", "cuda"):
        summary = extract(str(tmp_path / "imgs"), str(tmp_path / device), _spec("tiny", device), shard_size=3,
                          batch_size=4, progress=False)
        assert summary.extracted == len(SIZES) * 2 and summary.failed == 2
    _stores_equal(tmp_path / "cpu", tmp_path / "cuda")


def test_the_extract_stage_decodes_jpegs_with_nvjpeg(tmp_path):
    from pipeline.stages.extract import extract

    _write(tmp_path / "imgs", "jpg", SIZES)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        assert Extractor(_spec("tiny", "cuda")).jpeg_on_device
    cpu = extract(str(tmp_path / "imgs"), str(tmp_path / "cpu"), _spec("tiny", "cpu"), batch_size=2, progress=False)
    gpu = extract(str(tmp_path / "imgs"), str(tmp_path / "cuda"), _spec("tiny", "cuda"), batch_size=2,
                  progress=False)
    assert (gpu.extracted, gpu.failed) == (cpu.extracted, cpu.failed) == (len(SIZES), 2)
    from pipeline.features import FeatureStore

    assert sorted(FeatureStore(tmp_path / "cuda").image_ids) == sorted(FeatureStore(tmp_path / "cpu").image_ids)


def test_the_forward_waits_for_the_gpu_only_for_nms_and_counts():
    from detector.preprocess import pad_batch, prepare_image

    gpu = _extractor(_spec("tiny", "cuda"))
    prepared = [prepare_image(_photo(h, w, i), gpu.cfg.input) for i, (h, w) in enumerate(SIZES)]
    batch, sizes = pad_batch([p.tensor.cuda() for p in prepared], 32)
    batch = batch.contiguous(memory_format=torch.channels_last)
    args = (batch, sizes, [p.scale for p in prepared], [p.original_size for p in prepared])
    gpu.model.extract_batch(*args)                                         # warm-up: cuDNN autotuning
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            regions = gpu.model.extract_batch(*args)
            forward_syncs = sum("synchroniz" in str(w.message) for w in caught)
            caught.clear()
            pack_regions(regions, "float16")
            pack_syncs = sum("synchroniz" in str(w.message) for w in caught)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    print(f"host synchronisations: forward {forward_syncs} for {len(prepared)} images, packing {pack_syncs}")
    assert pack_syncs == 0
    assert forward_syncs <= len(prepared) + 1

"""The extract stage: image discovery/decoding, one shard in-process, the Dask workflow, the CLI."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from workflows.cli import main as cli_main
from pipeline.errors import PipelineError
from pipeline.extract import Extractor, extract_images, extract_shard, resolve_spec
from pipeline.features import FeatureStore, read_failures
from pipeline.images import ImageDecodeError, decode_image, discover_images


# -- image files ---------------------------------------------------------------------------

def _png(width: int, height: int, bit_depth: int, color_type: int, raw_rows: bytes) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw_rows)) + chunk(b"IEND", b"")


def _photo(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (h // 16 + 1, w // 16 + 1, 3)).astype(np.uint8)
    return np.kron(base, np.ones((16, 16, 1), dtype=np.uint8))[:h, :w]


def write_good_images(folder: Path, n: int, nested: bool = True) -> list[str]:
    ids = []
    for i in range(n):
        sub = folder / ("a" if nested and i % 2 else "") / ("b" if nested and i % 3 == 0 else "")
        sub.mkdir(parents=True, exist_ok=True)
        suffix = [".jpg", ".png", ".JPEG"][i % 3]
        Image.fromarray(_photo(96 + 8 * (i % 4), 128 + 16 * (i % 3), i)).save(sub / f"img{i:03d}{suffix}")
        ids.append(f"img{i:03d}")
    return ids


def write_bad_images(folder: Path) -> dict[str, str]:
    """name -> expected reason fragment."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "zero.jpg").write_bytes(b"")
    buf = io.BytesIO()
    Image.fromarray(_photo(64, 64, 1)).save(buf, format="JPEG")
    (folder / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (folder / "notes.jpg").write_text("this is a text file, not a JPEG\n")
    # header says 10000 x 10000 = 1e8 pixels > PIL's 89,478,485; the data is never decoded
    (folder / "bomb.png").write_bytes(_png(10000, 10000, 1, 0, b"\x00" * 10))
    return {"zero": "empty file", "truncated": "truncated", "notes": "not an image",
            "bomb": "decompression-bomb limit"}


def test_unusual_but_valid_images_decode(tmp_path):
    cmyk = Image.new("CMYK", (20, 10), (0, 255, 0, 0))
    cmyk.save(tmp_path / "cmyk.jpg")
    out = decode_image(tmp_path / "cmyk.jpg")
    assert out.shape == (10, 20, 3) and out.dtype == np.uint8
    assert out[5, 5, 0] > 200 and out[5, 5, 1] < 60                     # magenta-ish, not garbage
    gray16 = (np.arange(8 * 8).reshape(8, 8) * 1000).astype(np.uint16)
    Image.fromarray(gray16).save(tmp_path / "gray16.png")
    out = decode_image(tmp_path / "gray16.png")
    assert out.shape == (8, 8, 3) and out[7, 7, 0] == round(63000 / 257)
    rows = b"".join(b"\x00" + np.full((4, 3), 0xFFFF - 257 * r, dtype=">u2").tobytes() for r in range(4))
    (tmp_path / "rgb16.png").write_bytes(_png(4, 4, 16, 2, rows))
    out = decode_image(tmp_path / "rgb16.png")
    assert out.shape == (4, 4, 3) and out[0, 0, 0] == 255 and out[3, 0, 0] == 252
    Image.new("LA", (6, 6), (128, 50)).save(tmp_path / "la.png")
    assert decode_image(tmp_path / "la.png")[0, 0].tolist() == [128, 128, 128]


def test_bad_images_fail_with_reasons(tmp_path):
    expected = write_bad_images(tmp_path)
    for name, fragment in expected.items():
        path = next(tmp_path.glob(f"{name}.*"))
        with pytest.raises(ImageDecodeError, match=fragment):
            decode_image(path)
    # over 2x the limit PIL itself refuses at open; same clear reason
    (tmp_path / "huge.png").write_bytes(_png(20000, 20000, 1, 0, b"\x00" * 10))
    with pytest.raises(ImageDecodeError, match="decompression-bomb limit"):
        decode_image(tmp_path / "huge.png")


def test_discovery_is_recursive_sorted_and_refuses_duplicate_stems(tmp_path):
    ids = write_good_images(tmp_path / "imgs", 6)
    (tmp_path / "imgs" / "readme.txt").write_text("x")
    (tmp_path / "imgs" / ".hidden.jpg").write_bytes(b"")
    found = discover_images(tmp_path / "imgs")
    assert [e.image_id for e in found] == sorted(ids)
    Image.fromarray(_photo(32, 32, 0)).save(tmp_path / "imgs" / "a" / "img000.png")
    with pytest.raises(PipelineError, match=r"img000.*img000") as err:
        discover_images(tmp_path / "imgs")
    assert "img000.png" in str(err.value) and "img000.jpg" in str(err.value)


# -- one shard in-process --------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_extractor():
    return Extractor(resolve_spec("tiny", "random"))


def test_extract_shard_skips_bad_images_and_writes_the_rest(tmp_path, tiny_extractor):
    write_good_images(tmp_path / "imgs", 4, nested=False)
    expected = write_bad_images(tmp_path / "imgs")
    entries = discover_images(tmp_path / "imgs")
    result = extract_shard(3, entries, tmp_path / "out", tiny_extractor, batch_size=3, feature_dtype="float32")
    assert result.info is not None and result.info.name == "shard-00003.parquet" and result.info.num_rows == 4
    reasons = {Path(f["image"]).stem: f["reason"] for f in result.failures}
    assert set(reasons) == set(expected)
    for name, fragment in expected.items():
        assert fragment in reasons[name]
    table = pq.read_table(tmp_path / "out" / "shard-00003.parquet")
    assert sorted(table.column("image_id").to_pylist()) == [f"img{i:03d}" for i in range(4)]


def test_extract_shard_same_features_for_any_batch_size_and_thread_count(tmp_path, tiny_extractor):
    write_good_images(tmp_path / "imgs", 5, nested=False)
    entries = discover_images(tmp_path / "imgs")
    extract_shard(0, entries, tmp_path / "a", tiny_extractor, batch_size=1, decode_threads=0, feature_dtype="float32")
    extract_shard(0, entries, tmp_path / "b", tiny_extractor, batch_size=4, decode_threads=2, feature_dtype="float32")
    ta, tb = (pq.read_table(tmp_path / d / "shard-00000.parquet") for d in ("a", "b"))
    assert ta.column("image_id").to_pylist() == tb.column("image_id").to_pylist()
    assert ta.column("num_boxes").to_pylist() == tb.column("num_boxes").to_pylist()
    assert ta.column("objects_id").to_pylist() == tb.column("objects_id").to_pylist()
    fa = np.concatenate([np.frombuffer(b, np.float32) for b in ta.column("features").to_pylist()])
    fb = np.concatenate([np.frombuffer(b, np.float32) for b in tb.column("features").to_pylist()])
    assert np.abs(fa - fb).max() <= 1e-5 * np.abs(fa).max()


# -- the Dask workflow and the CLI --------------------------------------------------------------

def _cli(*args: str) -> int:
    return cli_main(["extract", *args])


def test_cli_extracts_reports_failures_and_resumes(tmp_path, capsys, caplog):
    ids = write_good_images(tmp_path / "imgs", 7)
    expected_bad = write_bad_images(tmp_path / "imgs" / "bad")
    out = tmp_path / "store"
    args = ["--images", str(tmp_path / "imgs"), "--out", str(out), "--preset", "tiny", "--weights", "random",
            "--shard-size", "4", "--batch-size", "2", "--no-progress"]
    assert _cli(*args) == 1                                           # some images failed
    err = capsys.readouterr().err
    assert "RANDOM WEIGHTS" in caplog.text and f"{len(ids)}/{len(ids) + 4} images in the store, 4 failed" in err

    store = FeatureStore(out)
    assert sorted(store.image_ids) == sorted(ids)
    one = store.get(ids[0])
    assert one.features.dtype == np.float16 and one.features.shape[1] == 256
    assert store.metadata.detector == "tiny" and store.metadata.weights_sha256 == "random"
    assert store.metadata.box_rule["selection" if "selection" in store.metadata.box_rule else "method"] == "caffe"
    failures = read_failures(out)
    assert sorted(Path(f["image"]).stem for f in failures) == sorted(expected_bad)

    shards = sorted(out.glob("shard-*.parquet"))
    before = {p.name: p.read_bytes() for p in shards}
    assert _cli(*args) == 1                                           # resume: nothing to do
    assert "0 shards written, 3 already complete" in capsys.readouterr().err
    shards[1].unlink()                                                # a lost shard is redone, identically
    assert _cli(*args) == 1
    assert "1 shards written, 2 already complete" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in sorted(out.glob("shard-*.parquet"))} == before
    assert len(read_failures(out)) == 4                               # one line per failed image, not per run
    assert sorted(FeatureStore(out).image_ids) == sorted(ids)


def test_cli_refuses_a_store_of_another_detector_config(tmp_path, capsys):
    write_good_images(tmp_path / "imgs", 2)
    base = ["--images", str(tmp_path / "imgs"), "--out", str(tmp_path / "s"), "--preset", "tiny",
            "--weights", "random", "--no-progress"]
    assert _cli(*base) == 0
    capsys.readouterr()
    assert _cli(*base, "--max-boxes", "50") == 1
    assert "different" in capsys.readouterr().err


def test_cli_user_errors_are_one_line(tmp_path, capsys, monkeypatch):
    write_good_images(tmp_path / "imgs", 2)
    monkeypatch.setenv("LXMERT_PIPELINE_CACHE", str(tmp_path / "cache"))
    assert _cli("--images", str(tmp_path / "imgs"), "--out", str(tmp_path / "o")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "faster_rcnn_from_caffe_attr.pkl" in err[0] and str(tmp_path / "cache") in err[0]
    assert _cli("--images", str(tmp_path / "imgs"), "--out", str(tmp_path / "o"), "--preset", "tiny") == 1
    assert "--weights random" in capsys.readouterr().err
    (tmp_path / "bad.pkl").write_bytes(b"\x80\x04K\x01.")                # a pickle of the int 1
    assert _cli("--images", str(tmp_path / "imgs"), "--out", str(tmp_path / "o"), "--preset", "tiny",
                "--weights", str(tmp_path / "bad.pkl")) == 1
    assert "bad.pkl" in capsys.readouterr().err
    assert _cli("--images", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"), "--preset", "tiny",
                "--weights", "random") == 1
    assert "image folder not found" in capsys.readouterr().err


# -- the CUDA path's code, run on the CPU ----------------------------------------------------

def _jpeg(rgb: np.ndarray, **save) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", **save)
    return buf.getvalue()


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[274] = orientation
    return exif.tobytes()


def write_device_path_images(folder: Path) -> list[str]:
    """JPEGs of every kind the device decoder takes or refuses, a PNG, and a bad file."""
    folder.mkdir(parents=True, exist_ok=True)
    photo = _photo(150, 210, 3)
    (folder / "j420.jpg").write_bytes(_jpeg(photo, quality=90))
    (folder / "j444.jpg").write_bytes(_jpeg(photo, quality=90, subsampling=0))
    (folder / "jprog.jpg").write_bytes(_jpeg(photo, progressive=True))
    (folder / "jgray.jpg").write_bytes(_jpeg(photo[:, :, 0]))
    (folder / "jrot6.jpg").write_bytes(_jpeg(photo, exif=_exif(6)))          # a phone's portrait photo
    (folder / "jrot3.jpg").write_bytes(_jpeg(photo, exif=_exif(3)))
    Image.new("CMYK", (120, 90), (0, 255, 0, 0)).save(folder / "jcmyk.jpg")   # to PIL
    (folder / "jtrail.jpg").write_bytes(_jpeg(photo) + b"trailing bytes")      # to PIL
    Image.fromarray(photo).save(folder / "png.png")
    data = _jpeg(photo)
    (folder / "jcut.jpg").write_bytes(data[: len(data) // 2])                  # to PIL, which refuses it
    # a sound header and end, broken markers inside: the device's decoder refuses it, then PIL does
    (folder / "jbad.jpg").write_bytes(data[:600] + b"\xff\xd0" * 200 + data[1000:])
    return ["j420", "j444", "jprog", "jgray", "jrot6", "jrot3", "jcmyk", "jtrail", "png"]


def test_exif_orientation_on_tensors_matches_pil():
    import torch

    from pipeline.images import apply_orientation, decode_image_data

    rgb = np.random.default_rng(0).integers(0, 255, (5, 7, 3)).astype(np.uint8)
    for orientation in range(1, 9):
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="PNG", exif=_exif(orientation))
        turned = apply_orientation(torch.from_numpy(rgb).permute(2, 0, 1), orientation).permute(1, 2, 0)
        assert np.array_equal(turned.numpy(), decode_image_data(buf.getvalue())), orientation


def test_only_jpegs_the_device_decodes_like_pil_go_to_it(tmp_path):
    from pipeline.images import jpeg_for_device

    write_device_path_images(tmp_path)
    to_device = {p.stem for p in tmp_path.iterdir() if jpeg_for_device(p.read_bytes()) is not None}
    assert to_device == {"j420", "j444", "jprog", "jgray", "jrot6", "jrot3", "jbad"}
    assert jpeg_for_device((tmp_path / "jrot6.jpg").read_bytes()).orientation == 6


def test_device_decoding_and_preparing_equal_the_decode_threads(tmp_path):
    """The CUDA flow (bytes in threads, one batched decode_jpeg, upload, prepare on the
    device) on the CPU, where torchvision's decoder is libjpeg-turbo like PIL's: the same
    failures and the same rows, bit for bit one image at a time. In batches of 4 an image
    that fails at the device stage leaves its batch smaller than the threads' batch, so
    the padding differs: equal within the batch tolerance of tests/test_detector.py."""
    ids = write_device_path_images(tmp_path)
    entries = discover_images(tmp_path)
    spec = resolve_spec("tiny", "random")
    threads = Extractor(spec)
    device = Extractor(spec, prepare_on_device=True, jpeg_on_device=True)
    for bs in (1, 4):
        a, fa = extract_images(entries, threads, batch_size=bs, feature_dtype="float32")
        b, fb = extract_images(entries, device, batch_size=bs, feature_dtype="float32")
        assert sorted(im.image_id for im in b) == sorted(ids) and fa == fb
        assert [f["image_id"] for f in fb] == ["jbad", "jcut"]
        assert "corrupt" in fb[0]["reason"] and "truncated" in fb[1]["reason"]
        for x, y in zip(a, b):
            assert (x.image_id, x.width, x.height) == (y.image_id, y.width, y.height)
            assert np.array_equal(x.objects_id, y.objects_id) and np.array_equal(x.attrs_id, y.attrs_id)
            if bs == 1:
                assert np.array_equal(x.boxes, y.boxes) and np.array_equal(x.features, y.features)
            else:
                np.testing.assert_allclose(x.boxes, y.boxes, atol=0.01, rtol=0)
                assert np.abs(x.features - y.features).max() <= 1e-5 * np.abs(x.features).max()
    rot = next(im for im in b if im.image_id == "jrot6")
    assert (rot.width, rot.height) == (150, 210)                                # upright frame


@pytest.mark.parametrize("feature_dtype", ["float16", "float32"])
def test_one_buffer_per_batch_gives_the_per_image_rows(tmp_path, tiny_extractor, feature_dtype):
    from detector.preprocess import prepare_image
    from pipeline.extract import pack_regions, regions_to_features, unpack_rows

    write_good_images(tmp_path, 3, nested=False)
    entries = discover_images(tmp_path)
    prepared = [prepare_image(decode_image(e.path), tiny_extractor.cfg.input) for e in entries]
    regions = tiny_extractor.extract_batch(prepared)
    rows, failures = unpack_rows(pack_regions(regions, feature_dtype),
                                 [(i, e, p.original_size) for i, (e, p) in enumerate(zip(entries, prepared))],
                                 feature_dtype)
    assert not failures
    for e, p, r, row in zip(entries, prepared, regions.split(), rows):
        ref = regions_to_features(e, p, r, feature_dtype)
        assert (row.image_id, row.width, row.height) == (ref.image_id, ref.width, ref.height)
        for name in ("boxes", "features", "objects_id", "objects_conf", "attrs_id", "attrs_conf"):
            got, want = getattr(row, name), getattr(ref, name)
            assert got.dtype == want.dtype and np.array_equal(got, want), name


def test_float16_on_the_device_rounds_as_numpy():
    import torch

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(100_000).astype(np.float32) * 10.0 ** rng.integers(-9, 6, 100_000),
                        np.array([65504, 65519.99, 65520, 1e-8, 6e-8, 2.98e-8, -0.0, np.nan, np.inf],
                                 dtype=np.float32)])
    with np.errstate(over="ignore"):
        want = x.astype(np.float16)
    got = torch.from_numpy(x).to(torch.float16).numpy()
    assert np.array_equal(got.view(np.uint16)[:-2], want.view(np.uint16)[:-2])   # NaN payloads may differ
    assert np.isnan(got[-2]) and np.isinf(got[-1])


def test_writer_error_reaches_the_caller_and_stops_later_jobs():
    import threading

    from pipeline.extract import OrderedWriter

    ran = []
    writer = OrderedWriter(max_pending=2)
    writer.submit(lambda: ran.append(1) or 1)

    def fail():
        raise OSError("disk full")
    writer.submit(fail)
    with pytest.raises(OSError, match="disk full"):
        for i in range(2, 50):           # raised at a later submit, once the failed job is done
            writer.submit(lambda i=i: ran.append(i))
    with pytest.raises(OSError, match="disk full"):
        writer.close()
    assert ran[:1] == [1] and len(ran) <= 3                        # jobs after the failure did not run
    assert not [t for t in threading.enumerate() if t.name.startswith("rows")]


def test_a_shard_that_cannot_be_published_leaves_nothing(tmp_path, tiny_extractor):
    write_good_images(tmp_path / "imgs", 3, nested=False)
    entries = discover_images(tmp_path / "imgs")
    out = tmp_path / "out"
    (out / "shard-00000.parquet").mkdir(parents=True)       # the final name is taken: the publish fails
    with pytest.raises(OSError):
        extract_shard(0, entries, out, tiny_extractor, batch_size=2)
    assert [p.name for p in out.iterdir()] == ["shard-00000.parquet"]    # no temporary left behind
    with pytest.raises(PipelineError, match="float16 or float32"):
        extract_shard(1, entries, out, tiny_extractor, feature_dtype="int8")

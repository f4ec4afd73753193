import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.errors import PipelineError
from pipeline.features import (FeatureStore, finalize_store, load_manifest, read_shard_metadata, shard_name,
                               verify_store, write_shard)
from tests.helpers.feature_data import make_image, make_metadata

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import bench_scale  # noqa: E402  (the shard writer's column as it was, the plain path of its fast one)


def build_store(directory, n=60, per_shard=25, dim=64, dtype="float16", vary_boxes=True):
    meta = make_metadata(dim=dim, dtype=dtype)
    images = [make_image(i, num_boxes=(10 + i % 27) if vary_boxes else 36, dim=dim) for i in range(n)]
    for k in range(0, n, per_shard):
        write_shard(directory / shard_name(k // per_shard), images[k:k + per_shard], meta)
    finalize_store(directory, meta)
    return images, meta


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_round_trip_every_field(tmp_path, dtype):
    images, meta = build_store(tmp_path, dtype=dtype)
    store = FeatureStore(tmp_path)
    assert len(store) == 60 and store.metadata == meta
    for want in images:
        got = store.get(want.image_id)
        assert got.features.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(got.features, want.features.astype(dtype))
        for name in ("boxes", "objects_id", "objects_conf", "attrs_id", "attrs_conf"):
            np.testing.assert_array_equal(getattr(got, name), getattr(want, name))
        assert (got.width, got.height, got.num_boxes) == (want.width, want.height, want.num_boxes)


def test_get_many_keeps_request_order_and_repeats(tmp_path):
    images, _ = build_store(tmp_path)
    store = FeatureStore(tmp_path)
    ids = ["img000059", "img000003", "img000040", "img000003"]
    got = store.get_many(ids)
    assert [g.image_id for g in got] == ids
    np.testing.assert_array_equal(got[2].boxes, images[40].boxes)
    with pytest.raises(KeyError, match="img999999"):
        store.get("img999999")


def test_readable_by_plain_parquet_tools(tmp_path):
    images, meta = build_store(tmp_path, n=10)
    table = pq.read_table(tmp_path / shard_name(0))
    assert table.column("image_id").to_pylist()[:2] == ["img000000", "img000001"]
    blob = table.column("features")[3].as_py()
    feats = np.frombuffer(blob, dtype="<f2").reshape(images[3].num_boxes, 64)
    np.testing.assert_array_equal(feats, images[3].features.astype(np.float16))
    footer_meta, rows = read_shard_metadata(tmp_path / shard_name(0))
    assert footer_meta == meta and rows == 10


def test_pickled_store_reopens_in_dataloader_workers(tmp_path):
    images, _ = build_store(tmp_path)
    store = FeatureStore(tmp_path)
    clone = pickle.loads(pickle.dumps(store))
    np.testing.assert_array_equal(clone.get("img000007").boxes, images[7].boxes)

    class Boxes(torch.utils.data.Dataset):
        def __len__(self):
            return len(store)

        def __getitem__(self, i):
            img = store.get(f"img{i:06d}")
            return torch.from_numpy(img.features.astype(np.float32).sum(0))

    loader = torch.utils.data.DataLoader(Boxes(), batch_size=8, num_workers=2)
    sums = torch.cat(list(loader))
    want = torch.stack([torch.from_numpy(im.features.astype(np.float16).astype(np.float32).sum(0)) for im in images])
    torch.testing.assert_close(sums, want)


def test_failed_write_leaves_no_shard(tmp_path, monkeypatch):
    meta = make_metadata()
    real = pq.write_table

    def write_then_die(table, where, **kw):
        real(table.slice(0, 1), where, **kw)  # a partial file is on disk under the temp name...
        raise OSError("disk full")             # ...when the writer dies

    monkeypatch.setattr(pq, "write_table", write_then_die)
    with pytest.raises(OSError):
        write_shard(tmp_path / shard_name(0), [make_image(i) for i in range(4)], meta)
    assert list(tmp_path.iterdir()) == []


def test_shard_with_other_metadata_is_refused(tmp_path):
    build_store(tmp_path, n=20, per_shard=10)
    other = make_metadata(dim=64, detector="vg-r101-c4")
    write_shard(tmp_path / shard_name(7), [make_image(100)], other)
    with pytest.raises(PipelineError, match=r"shard-00007.parquet.*detector"):
        finalize_store(tmp_path, make_metadata())


def test_wrong_feature_dim_is_refused_at_write(tmp_path):
    with pytest.raises(ValueError, match="features shape"):
        write_shard(tmp_path / shard_name(0), [make_image(0, dim=32)], make_metadata(dim=64))


def test_duplicate_image_id_across_shards(tmp_path):
    meta = make_metadata()
    write_shard(tmp_path / shard_name(0), [make_image(1), make_image(2)], meta)
    write_shard(tmp_path / shard_name(1), [make_image(2)], meta)
    with pytest.raises(PipelineError, match=r"'img000002' appears in both shard-00000.parquet and shard-00001"):
        finalize_store(tmp_path, meta)


def test_verify_names_corrupted_and_truncated_shards(tmp_path):
    build_store(tmp_path, n=75, per_shard=25)
    assert verify_store(tmp_path) == []
    corrupt = tmp_path / shard_name(1)
    data = bytearray(corrupt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    truncated = tmp_path / shard_name(2)
    truncated.write_bytes(truncated.read_bytes()[:5000])
    problems = dict(verify_store(tmp_path))
    assert set(problems) == {shard_name(1), shard_name(2)}
    assert "checksum" in problems[shard_name(1)] and "truncated" in problems[shard_name(2)]
    with pytest.raises(PipelineError, match=r"shard-00002.parquet.*truncated"):
        FeatureStore(tmp_path)


def test_missing_manifest_says_what_to_do(tmp_path):
    write_shard(tmp_path / shard_name(0), [make_image(0)], make_metadata())
    with pytest.raises(PipelineError, match="no manifest.json"):
        FeatureStore(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(PipelineError, match="malformed manifest"):
        load_manifest(tmp_path)


def test_not_a_feature_shard(tmp_path):
    import pyarrow as pa

    pq.write_table(pa.table({"x": [1, 2]}), tmp_path / shard_name(0))
    with pytest.raises(PipelineError, match="no lxmert_pipeline schema metadata"):
        finalize_store(tmp_path, make_metadata())


def test_reader_private_memory_does_not_grow_with_store_size(tmp_path):
    """Reading every image of a 4x larger store costs no more private (anonymous) memory:
    features come from the shared page cache through mmap, not from copies."""
    dim, sizes = 512, (150, 600)
    script = textwrap.dedent("""
        import sys, numpy as np
        from pipeline.features import FeatureStore
        def anon_kb():
            for line in open('/proc/self/status'):
                if line.startswith('RssAnon:'):
                    return int(line.split()[1])
        store = FeatureStore(sys.argv[1])
        before = anon_kb(); peak = before; total = 0.0
        for k, image_id in enumerate(store.image_ids):
            total += float(store.get(image_id).features[0, 0])
            if k % 25 == 0:
                peak = max(peak, anon_kb())
        print(peak - before)
    """)
    growth = {}
    for n in sizes:
        d = tmp_path / f"s{n}"
        d.mkdir()
        build_store(d, n=n, per_shard=150, dim=dim, vary_boxes=False)
        out = subprocess.run([sys.executable, "-c", script, str(d)], capture_output=True, text=True, check=True)
        growth[n] = int(out.stdout.strip()) / 1024  # MB
    store_mb = sizes[1] * 36 * dim * 2 / 2**20
    print("private memory growth MB", growth, "store MB", store_mb)
    assert growth[sizes[1]] < growth[sizes[0]] + 8, growth
    assert growth[sizes[1]] < store_mb / 2, (growth, store_mb)


@pytest.mark.parametrize("compression", [None, "zstd"])
def test_zero_copy_path_matches_pyarrow_decoding(tmp_path, compression):
    meta = make_metadata(dim=48)
    images = [make_image(i, num_boxes=i % 31, dim=48) for i in range(90)]  # some with no boxes
    # several row groups and, with small pages, several data pages per column chunk
    write_shard(tmp_path / shard_name(0), images[:70], meta, compression=compression, row_group_size=32)
    write_shard(tmp_path / shard_name(1), images[70:], meta, compression=compression, row_group_size=7)
    finalize_store(tmp_path, meta)
    fast, plain = FeatureStore(tmp_path), FeatureStore(tmp_path, zero_copy=False)
    ids = [im.image_id for im in images][::-1]
    for a, b in zip(fast.get_many(ids), plain.get_many(ids)):
        assert a.image_id == b.image_id
        np.testing.assert_array_equal(a.features, b.features)
        np.testing.assert_array_equal(a.boxes, b.boxes)
    uses_mmap = fast._mapped(0) is not None
    assert uses_mmap == (compression is None)


def _every_layout(dim: int) -> list:
    """Features as a detector or a converter may hand them over: float32 and float16, no boxes,
    a Fortran-ordered array, a strided view, big-endian."""
    images = [make_image(i, num_boxes=n, dim=dim) for i, n in enumerate([10, 0, 36, 1, 7, 12])]
    images[2].features = np.asfortranarray(images[2].features)
    images[3].features = images[3].features.astype(">f4")
    images[4].features = images[4].features.astype(np.float16)
    wide = np.repeat(images[5].features, 2, axis=1)
    images[5].features = wide[:, ::2]
    assert not images[5].features.flags.c_contiguous
    return images


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_the_shard_writer_writes_the_same_bytes_as_the_plain_path(tmp_path, dtype, monkeypatch):
    import pipeline.features.shard as shard

    meta = make_metadata(dim=48, dtype=dtype)
    images = _every_layout(48)
    write_shard(tmp_path / "once.parquet", images, meta)
    monkeypatch.setattr(shard, "_binary_array", bench_scale._plain_binary_array)
    write_shard(tmp_path / "plain.parquet", images, meta)
    assert (tmp_path / "once.parquet").read_bytes() == (tmp_path / "plain.parquet").read_bytes()


def test_the_shard_writer_copies_the_features_once(monkeypatch):
    """Transient memory of building a shard's table: the features once (the column's buffer),
    where the plain path held them twice (float16 in) or three times (float32 in, converted)."""
    import tracemalloc

    import pipeline.features.shard as shard

    meta = make_metadata(dim=512)
    images = [make_image(i, num_boxes=36, dim=512) for i in range(48)]
    for im in images:
        im.features = im.features.astype(np.float16)
    stored = sum(im.features.nbytes for im in images)

    def peak() -> int:
        tracemalloc.start()
        try:
            shard.images_to_table(images, meta)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    once = peak()
    monkeypatch.setattr(shard, "_binary_array", bench_scale._plain_binary_array)
    plain = peak()
    assert stored <= once < 1.3 * stored, (once, stored)
    assert plain >= 1.9 * stored, (plain, stored)

"""What a feature-store reader guarantees about the bytes it hands to training: changed
bytes inside a shard, an image id in two shards, and non-finite values are found, by the
reader, by `features verify`, by `import-tsv` and by the copy commands (issue 28.4, 24.9,
24.10). All on real files written by the real writers."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.errors import PipelineError
from pipeline.features import FeatureStore, finalize_store, shard_name, write_shard
from pipeline.features.integrity import VERIFIED, check_checksums
from pipeline.training import RunDir, TrainConfig, train
from tests.helpers.feature_data import make_image, make_metadata, make_store
from tests.helpers.training_tasks import ClusterData, ClusterTask
from workflows.cli import main as cli_main

MARKER = np.array([1234.0, -4321.0, 1111.0, -2222.0], dtype=np.float16)


def _images(n: int = 24, dim: int = 32):
    images = [make_image(i, num_boxes=10, dim=dim) for i in range(n)]
    images[5].features[0, :4] = MARKER          # a byte pattern to find in the file
    return images


def _age(directory: Path, seconds: float = 3600) -> None:
    """Make the store's files look written an hour ago, as any store a user trains on is."""
    past = Path(directory).stat().st_mtime - seconds
    for p in Path(directory).iterdir():
        os.utime(p, (past, past))


def _flip(path: Path, offset: int, count: int = 64) -> None:
    """Change `count` bytes in place: the file keeps its size (as bit rot or a bad copy would)."""
    with open(path, "r+b") as fh:
        fh.seek(offset)
        data = bytearray(fh.read(count))
        fh.seek(offset)
        fh.write(bytes(b ^ 0xFF for b in data))


def _feature_offset(path: Path) -> int:
    return path.read_bytes().index(MARKER.tobytes())


def test_a_shard_with_bytes_flipped_inside_is_refused_on_open(tmp_path):
    make_store(tmp_path / "s", _images(), per_shard=8)
    shard = tmp_path / "s" / shard_name(0)
    size = shard.stat().st_size
    _flip(shard, _feature_offset(shard))
    assert shard.stat().st_size == size                            # the cheap size and footer checks pass
    with pytest.raises(PipelineError, match="sha256 checksum differs") as err:
        FeatureStore(tmp_path / "s")
    assert shard_name(0) in str(err.value)
    FeatureStore(tmp_path / "s", verify="never")                  # the opt-out reads it (checks size only)


def test_a_stamped_store_is_not_hashed_again_until_a_shard_changes(tmp_path):
    make_store(tmp_path / "s", _images(), per_shard=8)
    _age(tmp_path / "s")
    shards = json.loads((tmp_path / "s" / "manifest.json").read_text())["shards"]
    assert check_checksums(tmp_path / "s", shards) == 3            # aged shards: hashed once, then stamped
    assert (tmp_path / "s" / VERIFIED).is_file()
    assert check_checksums(tmp_path / "s", shards) == 0            # stat matches the stamp: nothing read
    shard = tmp_path / "s" / shard_name(0)
    _flip(shard, _feature_offset(shard))                            # rewriting in place moves the mtime
    with pytest.raises(PipelineError, match="sha256 checksum differs"):
        FeatureStore(tmp_path / "s")


def test_export_tsv_hashes_what_it_copies_even_when_a_stamp_vouches_for_it(tmp_path, capsys):
    make_store(tmp_path / "s", _images(), per_shard=8)
    _age(tmp_path / "s")
    FeatureStore(tmp_path / "s")                                   # stamps the store
    shard = tmp_path / "s" / shard_name(0)
    st = shard.stat()
    _flip(shard, _feature_offset(shard))
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))           # a change the stamp cannot see
    FeatureStore(tmp_path / "s")
    assert cli_main(["features", "export-tsv", str(tmp_path / "s"), "--out", str(tmp_path / "s.tsv")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and shard_name(0) in err[0] and "sha256" in err[0]
    assert not (tmp_path / "s.tsv").exists()


def test_verify_finds_an_image_id_in_two_shards(tmp_path, capsys):
    images = _images(16)
    meta = make_metadata(dim=32)
    store = tmp_path / "s"
    store.mkdir()
    write_shard(store / shard_name(0), images[:8], meta)
    write_shard(store / shard_name(1), images[8:], meta)
    finalize_store(store, meta)
    # a second shard written later by another tool that repeats an image of shard 0
    write_shard(store / shard_name(1), [images[3]] + images[9:], meta)
    manifest = json.loads((store / "manifest.json").read_text())
    from pipeline.features.shard import file_sha256

    manifest["shards"][1].update(sha256=file_sha256(store / shard_name(1)),
                                 num_bytes=(store / shard_name(1)).stat().st_size)
    (store / "manifest.json").write_text(json.dumps(manifest))
    assert cli_main(["features", "verify", str(store)]) == 1
    out = capsys.readouterr().out
    assert f"BAD  {shard_name(1)}: image_id {images[3].image_id!r} is also in {shard_name(0)}" in out
    assert "1 of 2 shards ok; 1 bad" in out


def _store_with_nan_in_image_5(directory: Path) -> None:
    """A store whose shard holds a NaN, as an older writer or another tool could leave it;
    the manifest's checksums match the bytes, so only a look at the values finds it."""
    make_store(directory, _images(), per_shard=8)
    shard = directory / shard_name(0)
    data = bytearray(shard.read_bytes())
    at = data.index(MARKER.tobytes())
    data[at + 2: at + 4] = np.array([np.nan], dtype=np.float16).tobytes()
    shard.write_bytes(bytes(data))
    finalize_store(directory, make_metadata(dim=32))                # re-hashed: checksums agree


def test_verify_finds_non_finite_features_naming_shard_and_image(tmp_path, capsys):
    _store_with_nan_in_image_5(tmp_path / "s")
    assert cli_main(["features", "verify", str(tmp_path / "s")]) == 1
    out = capsys.readouterr().out
    assert f"BAD  {shard_name(0)}: image 'img000005': 1 non-finite feature values" in out
    assert "2 of 3 shards ok; 1 bad" in out


def test_the_shard_writer_refuses_non_finite_rows(tmp_path):
    images = _images(8)
    images[2].boxes[1, 3] = np.inf
    with pytest.raises(ValueError, match=r"img000002.*1 non-finite box coordinates"):
        write_shard(tmp_path / shard_name(0), images, make_metadata(dim=32))
    images = _images(8)
    images[1].features[0, 0] = 1e6                                  # finite in float32, inf in float16
    with pytest.raises(ValueError, match=r"img000001.*beyond the float16 range"):
        write_shard(tmp_path / shard_name(0), images, make_metadata(dim=32))
    assert not list(tmp_path.iterdir())


def _tsv_line(img) -> str:
    def b64(a, dtype):
        return base64.b64encode(np.ascontiguousarray(a, dtype=dtype).tobytes()).decode()
    return "\t".join([img.image_id, str(img.height), str(img.width), b64(img.objects_id, "<i8"),
                      b64(img.objects_conf, "<f4"), b64(img.attrs_id, "<i8"), b64(img.attrs_conf, "<f4"),
                      str(img.num_boxes), b64(img.boxes, "<f4"), b64(img.features, "<f4")]) + "\n"


def test_import_tsv_refuses_or_skips_rows_with_non_finite_features(tmp_path, capsys):
    images = [make_image(i, num_boxes=6, dim=16) for i in range(5)]
    images[3].features[2, 7] = np.nan
    tsv = tmp_path / "in.tsv"
    tsv.write_text("".join(_tsv_line(im) for im in images))
    assert cli_main(["features", "import-tsv", str(tsv), "--out", str(tmp_path / "a")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{tsv}: line 4: img_id 'img000003': 1 non-finite feature values" in err[0]
    assert not (tmp_path / "a" / "manifest.json").exists()

    assert cli_main(["features", "import-tsv", str(tsv), "--out", str(tmp_path / "b"), "--skip-bad-lines"]) == 0
    assert "skipped 1 bad lines" in capsys.readouterr().out
    store = FeatureStore(tmp_path / "b")
    assert sorted(store.image_ids) == [im.image_id for i, im in enumerate(images) if i != 3]
    failures = [json.loads(line) for line in (tmp_path / "b" / "failures.jsonl").read_text().splitlines()]
    assert len(failures) == 1 and "img000003" in failures[0]["reason"] and failures[0]["image"] == f"{tsv}:4"


class _StoreRows(ClusterData):
    """Cluster points whose inputs come from a feature store's first feature of each image
    (so a NaN in the store reaches the model as it would in pretraining)."""

    def __init__(self, store_dir: Path, n: int, dim: int):
        super().__init__(n, dim, 3, 0, 0.0)
        store = FeatureStore(store_dir, verify="never")
        rows = [store.get(i).features[0, :dim].astype(np.float32) for i in store.image_ids]
        self.x = np.stack([rows[k % len(rows)] for k in range(n)])


def test_a_nan_loss_at_step_1_says_whether_the_inputs_were_finite(tmp_path):
    _store_with_nan_in_image_5(tmp_path / "s")
    config = TrainConfig(epochs=1, batch_size=24, lr=1e-3, warmup=0.0, log_every=1, optimizer="bert",
                         progress=False, seed=0)

    class StoreTask(ClusterTask):
        def train_data(self):
            return _StoreRows(tmp_path / "s", 24, self.dim)

    with pytest.raises(PipelineError) as err:
        train(StoreTask(n=24, dim=8), config, RunDir(tmp_path / "run"))
    message = str(err.value)
    assert "the loss became nan at step 1" in message
    assert "the inputs are not finite: the last batch's x hold NaN or inf" in message and "features verify" in message

    class DivergingTask(ClusterTask):                                # finite inputs, a loss that overflows
        def loss(self, model, batch, epoch):
            ce, parts = super().loss(model, batch, epoch)
            return ce * torch.tensor(float("inf")), parts

    with pytest.raises(PipelineError) as err:
        train(DivergingTask(n=24, dim=8), config, RunDir(tmp_path / "run2"))
    assert "the last batch's inputs were finite (lower --lr" in str(err.value)


def test_pretrain_refuses_a_store_with_a_corrupted_shard(tmp_path, capsys):
    """The reported case: 64 bytes flipped inside a shard (same size); pretrain trained on it."""
    from tests.helpers.pretrain_world import make_world

    data, store = make_world(tmp_path, images=60)
    shard = sorted(Path(store).glob("shard-*.parquet"))[0]
    _flip(shard, shard.stat().st_size // 2)
    assert cli_main(["pretrain", "--features", str(store), "--data", str(data), "--out", str(tmp_path / "run"),
                     "--preset", "tiny", "--batch-size", "8", "--steps", "2", "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and shard.name in err[0] and "sha256 checksum differs" in err[0]
    assert not (tmp_path / "run" / "final").exists()


def _shards_of(directory: Path) -> list[dict]:
    return json.loads((directory / "manifest.json").read_text())["shards"]


def test_finalize_store_hashes_only_the_shards_the_stamp_cannot_vouch_for(tmp_path):
    store, meta, images = tmp_path / "s", make_metadata(dim=32), _images()
    make_store(store, images, per_shard=8)
    _age(store)
    FeatureStore(store)                                              # hashes the aged shards and stamps them
    plain = _shards_of(store)
    finalize_store(store, meta)                                      # nothing changed: the same manifest
    assert _shards_of(store) == plain
    (store / VERIFIED).unlink()
    finalize_store(store, meta)                                      # the plain path: every shard hashed
    assert _shards_of(store) == plain

    FeatureStore(store)                                              # stamped again
    vouched, rewritten = store / shard_name(0), store / shard_name(1)
    st = vouched.stat()
    _flip(vouched, _feature_offset(vouched))
    os.utime(vouched, ns=(st.st_atime_ns, st.st_mtime_ns))          # a change the stamp cannot see: trusted
    blob = images[9].features.astype(np.float16).tobytes()[:64]
    _flip(rewritten, rewritten.read_bytes().index(blob))             # rewritten in place (new mtime): hashed
    finalize_store(store, meta)
    after = _shards_of(store)
    assert after[0] == plain[0]                                      # carried over, not read
    assert after[1]["sha256"] != plain[1]["sha256"]
    from pipeline.features.shard import file_sha256
    assert after[1]["sha256"] == file_sha256(rewritten)
    assert after[2] == plain[2]
    assert cli_main(["features", "verify", str(store)]) == 1         # verify hashes everything: finds shard 0

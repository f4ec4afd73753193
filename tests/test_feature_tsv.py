import base64

import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.features import FeatureStore, read_failures
from pipeline.features.tsv import export_tsv, format_line, import_tsv
from tests.helpers.feature_data import make_image
from workflows.cli import main


def write_tsv(path, images):
    with open(path, "w") as fh:
        for img in images:
            fh.write(format_line(img))


def test_float32_round_trip_keeps_every_value(tmp_path):
    images = [make_image(i, num_boxes=36, dim=48) for i in range(23)]
    write_tsv(tmp_path / "in.tsv", images)
    report = import_tsv([tmp_path / "in.tsv"], tmp_path / "store", dtype="float32", shard_size=10)
    assert (report.images, report.shards) == (23, 3)
    export_tsv(tmp_path / "store", tmp_path / "out.tsv")
    assert (tmp_path / "out.tsv").read_bytes() == (tmp_path / "in.tsv").read_bytes()


def test_float16_import_loses_only_float16_precision(tmp_path):
    images = [make_image(i, num_boxes=36, dim=48) for i in range(5)]
    write_tsv(tmp_path / "in.tsv", images)
    import_tsv([tmp_path / "in.tsv"], tmp_path / "store")
    store = FeatureStore(tmp_path / "store")
    got = store.get(images[2].image_id).features.astype(np.float32)
    np.testing.assert_allclose(got, images[2].features, rtol=1e-3, atol=1e-4)
    assert store.metadata.feature_dtype == "float16" and store.metadata.num_objects == 1600


def test_reads_several_files_into_one_store(tmp_path):
    write_tsv(tmp_path / "a.tsv", [make_image(i) for i in range(3)])
    write_tsv(tmp_path / "b.tsv", [make_image(i) for i in range(3, 7)])
    import_tsv([tmp_path / "a.tsv", tmp_path / "b.tsv"], tmp_path / "store")
    assert len(FeatureStore(tmp_path / "store")) == 7


def _bad_lines(images):
    good = [format_line(img) for img in images]
    fields = good[1].rstrip("\n").split("\t")
    wrong_count = "\t".join(fields[:-1]) + "\n"
    fields = good[2].rstrip("\n").split("\t")
    fields[8] = "!!notbase64!!"
    bad_b64 = "\t".join(fields) + "\n"
    fields = good[3].rstrip("\n").split("\t")
    fields[4] = base64.b64encode(np.zeros(5, np.float32).tobytes()).decode()
    wrong_len = "\t".join(fields) + "\n"
    return [good[0], wrong_count, bad_b64, wrong_len, good[4]]


@pytest.mark.parametrize("line_no,message", [(2, "9 tab-separated fields, expected 10"), (3, "bad base64"),
                                             (4, "objects_conf: 20 bytes, expected 36 x float32")])
def test_malformed_line_stops_with_file_and_line(tmp_path, line_no, message):
    lines = _bad_lines([make_image(i) for i in range(5)])
    keep = [lines[0], lines[line_no - 1]]
    (tmp_path / "bad.tsv").write_text("".join(keep))
    with pytest.raises(PipelineError) as err:
        import_tsv([tmp_path / "bad.tsv"], tmp_path / "store")
    assert f"bad.tsv: line 2: " in str(err.value) and message in str(err.value)


def test_skip_bad_lines_reports_them(tmp_path):
    (tmp_path / "bad.tsv").write_text("".join(_bad_lines([make_image(i) for i in range(5)])))
    report = import_tsv([tmp_path / "bad.tsv"], tmp_path / "store", skip_bad_lines=True)
    assert report.images == 2
    failures = read_failures(tmp_path / "store")
    assert [f["image"].rsplit(":", 1)[1] for f in failures] == ["2", "3", "4"]
    assert sorted(FeatureStore(tmp_path / "store").image_ids) == ["img000000", "img000004"]


def test_cli_import_info_verify_export(tmp_path, capsys):
    write_tsv(tmp_path / "in.tsv", [make_image(i, dim=32) for i in range(12)])
    assert main(["features", "import-tsv", str(tmp_path / "in.tsv"), "--out", str(tmp_path / "s"),
                 "--dtype", "float32", "--shard-size", "5"]) == 0
    assert main(["features", "info", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "images          12" in out and "shards          3" in out and "float32" in out
    assert main(["features", "verify", str(tmp_path / "s")]) == 0
    assert "3 of 3 shards ok" in capsys.readouterr().out
    shard = tmp_path / "s" / "shard-00001.parquet"
    shard.write_bytes(shard.read_bytes()[:-100])
    assert main(["features", "verify", str(tmp_path / "s")]) == 1
    out = capsys.readouterr().out
    assert "BAD  shard-00001.parquet" in out and "2 of 3 shards ok" in out
    assert main(["features", "export-tsv", str(tmp_path / "s"), "--out", str(tmp_path / "o.tsv")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "shard-00001.parquet" in err[0]

"""Small things a careful user meets (issue 28, item 7): photos taken upright, unreadable files,
non-UTF-8 TSVs, usage errors, a file where a folder belongs, a split without its questions,
a pickle that carries code, and the GQA notes' file names."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.features.tsv import format_line
from pipeline.images import ImageDecodeError, decode_image
from tests.helpers.feature_data import make_image, make_metadata, make_store
from tests.helpers.official_eval_files import GQA_PREDICTIONS, write_data_root
from workflows.cli import main


def _one_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0]
    return lines[0]


def test_a_phone_photo_is_decoded_upright_as_its_exif_orientation_says(tmp_path):
    # stored landscape 40 wide x 20 high, white in the left quarter; tag 6: "turn 90° clockwise to view"
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :10] = 255
    picture = Image.fromarray(stored)
    exif = picture.getexif()
    exif[0x0112] = 6
    picture.save(tmp_path / "phone.jpg", exif=exif, quality=95)

    upright = decode_image(tmp_path / "phone.jpg")
    assert upright.shape == (40, 20, 3)                  # portrait, as every viewer shows it
    assert upright[:10].mean() > 200 and upright[12:].mean() < 30    # the white quarter turned to the top
    assert decode_image(tmp_path / "phone.jpg", upright=False).shape == (20, 40, 3)


def test_an_unreadable_image_is_permission_denied_not_corrupt():
    folder = Path(tempfile.mkdtemp(prefix="unreadable-"))   # a folder any user may enter
    image = folder / "locked.png"
    try:
        os.chmod(folder, 0o755)
        Image.new("RGB", (8, 8)).save(image)
        os.chmod(image, 0)
        # root reads any file: decode as an unprivileged user there (the effective uid only,
        # so the test process can turn back)
        as_nobody = os.geteuid() == 0
        if as_nobody:
            os.seteuid(65534)
        try:
            with pytest.raises(ImageDecodeError) as err:
                decode_image(image)
        finally:
            if as_nobody:
                os.seteuid(0)
        assert str(err.value) == "cannot read file: permission denied"
    finally:
        image.unlink(missing_ok=True)
        folder.rmdir()


def test_import_tsv_of_a_non_utf8_file_names_it_and_leaves_no_store_folder(tmp_path, capsys):
    tsv = tmp_path / "latin1.tsv"
    good = format_line(make_image(0, num_boxes=4, dim=8))
    tsv.write_bytes(good.encode() + good.replace("img000000", "caf\xe9").encode("latin-1"))
    out = tmp_path / "store"
    assert main(["features", "import-tsv", str(tsv), "--out", str(out)]) == 1
    line = _one_line(capsys)
    assert str(tsv) in line and "not UTF-8" in line and "UnicodeDecodeError" not in line
    assert not out.exists()


def _extract(images, out, *extra):
    return main(["extract", "--images", str(images), "--out", str(out), "--preset", "tiny", "--weights", "random",
                 "--no-progress", *map(str, extra)])


def test_extract_usage_errors_exit_2_and_out_naming_a_file_is_one_line(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (32, 24), "red").save(images / "a.png")
    with pytest.raises(SystemExit) as stopped:
        _extract(images, tmp_path / "s", "--batch-size", "0")
    assert stopped.value.code == 2 and "--batch-size must be at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stopped:
        _extract(images, tmp_path / "s", "--shard-size", "0")
    assert stopped.value.code == 2 and "--shard-size must be at least 1" in capsys.readouterr().err

    taken = tmp_path / "a-file"
    taken.write_text("")
    assert _extract(images, taken) == 1
    line = _one_line(capsys)
    assert str(taken) in line and "is a file" in line and "FileExistsError" not in line


def test_finetune_on_a_split_without_its_questions_file_says_so(tmp_path, capsys):
    # write_data_root ships VQA train2014 annotations without the questions file
    data = write_data_root(tmp_path / "data")
    store = make_store(tmp_path / "store", [make_image(i, dim=8) for i in range(2)], make_metadata(dim=8))
    code = main(["finetune", "--task", "vqa", "--init", "none", "--preset", "tiny", "--features",
                 str(store.directory), "--data", str(data), "--train", "train2014", "--valid", "none",
                 "--out", str(tmp_path / "run"), "--steps", "1", "--no-progress"])
    assert code == 1
    line = _one_line(capsys)
    assert "'train2014' lacks the file fine-tuning reads" in line
    assert "vqa/v2_OpenEnded_mscoco_train2014_questions.json" in line and "unknown" not in line


class _Payload:
    def __reduce__(self):
        return (print, ("this ran",))


def test_a_pickle_with_code_is_refused_for_that_reason_without_torchs_advice(tmp_path, capsys):
    evil = tmp_path / "weights.pt"
    torch.save({"backbone.weight": _Payload()}, evil)
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (32, 24)).save(images / "a.png")
    assert _extract(images, tmp_path / "s", "--weights", evil) == 1
    line = _one_line(capsys)
    assert str(evil) in line and "refused: the file contains code" in line
    assert "this ran" not in line and "weights_only" not in line and "trust" not in line

    from model.checkpoints import read_state_dict
    from model.errors import CheckpointError
    with pytest.raises(CheckpointError, match="refused: the file contains code") as err:
        read_state_dict(evil)
    assert "weights_only" not in str(err.value)


def test_gqa_consistency_note_names_the_splits_file(tmp_path):
    data = write_data_root(tmp_path / "data")
    predictions = tmp_path / "gqa.json"
    predictions.write_text(json.dumps([{"questionId": q, "prediction": a} for q, a in GQA_PREDICTIONS.items()
                                       if q != "05"]))
    assert main(["evaluate", "--task", "gqa", "--predictions", str(predictions), "--data", str(data),
                 "--split", "testdev", "--out", str(tmp_path / "out")]) == 0
    note = json.loads((tmp_path / "out" / "results.json").read_text())["unavailable"]["consistency"]
    assert "testdev_all_questions.json" in note and "{split}" not in note

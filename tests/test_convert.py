"""`lxmert-pipeline convert`: original .pth and run directories to transformers directories."""

import json

import torch
import transformers

from model import LxmertConfig, LxmertForPreTraining, LxmertForQuestionAnswering, save_pretrained
from tests.helpers.lxmert_inputs import make_inputs
from tests.helpers.original_checkpoints import to_original_finetuned, to_original_pretraining
from workflows.cli import main


def test_original_pretraining_pth_to_transformers(tmp_path, capsys):
    config = LxmertConfig.preset("tiny")
    torch.manual_seed(0)
    source = LxmertForPreTraining(config).eval()
    torch.save(to_original_pretraining(source.state_dict()), tmp_path / "model_LXRT.pth")
    code = main(["convert", "--from", str(tmp_path / "model_LXRT.pth"), "--to", str(tmp_path / "out"),
                 "--num-attention-heads", "4"])
    assert code == 0
    assert "LxmertForPreTraining" in capsys.readouterr().out
    theirs = transformers.LxmertForPreTraining.from_pretrained(tmp_path / "out").eval()
    inputs = make_inputs(config)
    with torch.no_grad():
        torch.testing.assert_close(theirs(**inputs).prediction_logits, source(**inputs).prediction_logits,
                                   atol=1e-5, rtol=1e-5)


def test_vqa_pth_with_new_answer_list(tmp_path, capsys):
    config = LxmertConfig.preset("tiny", num_qa_labels=4)
    source = LxmertForQuestionAnswering(config)
    torch.save(to_original_finetuned(source.state_dict(), "answer_head.logit_fc."), tmp_path / "BEST.pth")
    (tmp_path / "src.json").write_text(json.dumps(["yes", "no", "2", "red"]))
    (tmp_path / "dst.json").write_text(json.dumps({"red": 0, "two": 1, "blue": 2}))
    code = main(["convert", "--from", str(tmp_path / "BEST.pth"), "--to", str(tmp_path / "out"),
                 "--num-attention-heads", "4", "--answers", str(tmp_path / "dst.json"),
                 "--source-answers", str(tmp_path / "src.json")])
    assert code == 0
    assert "2/3 answers matched" in capsys.readouterr().out
    theirs = transformers.LxmertForQuestionAnswering.from_pretrained(tmp_path / "out")
    assert theirs.answer_head.logit_fc[3].weight.shape[0] == 3
    assert theirs.config.id2label == {0: "red", 1: "two", 2: "blue"}


def test_run_directory_converts_its_best_checkpoint(tmp_path):
    config = LxmertConfig.preset("tiny")
    for name, seed in (("step-100", 1), ("best", 2)):
        torch.manual_seed(seed)
        save_pretrained(LxmertForPreTraining(config), tmp_path / "run" / "checkpoints" / name)
    assert main(["convert", "--from", str(tmp_path / "run"), "--to", str(tmp_path / "out")]) == 0
    best = (tmp_path / "run" / "checkpoints" / "best" / "model.safetensors").read_bytes()
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == best


def test_bad_input_is_one_line(tmp_path, capsys):
    (tmp_path / "broken.pth").write_bytes(b"\x00" * 10)
    assert main(["convert", "--from", str(tmp_path / "broken.pth"), "--to", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "broken.pth" in err and "Traceback" not in err
    assert main(["convert", "--from", str(tmp_path / "nothing"), "--to", str(tmp_path / "out")]) == 1
    assert "no such checkpoint" in capsys.readouterr().err

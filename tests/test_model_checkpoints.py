"""Checkpoints: transformers directories both ways, original LXMERT .pth imports, answer transfer,
and readable reports for checkpoints that do not fit."""

import json

import pytest
import torch
import transformers

from model import (CheckpointError, LxmertConfig, LxmertForNLVR2, LxmertForPreTraining,
                   LxmertForQuestionAnswering, load_pretrained, save_pretrained)
from model.checkpoints import read_checkpoint
from tests.helpers.lxmert_inputs import make_inputs
from tests.helpers.original_checkpoints import to_original_finetuned, to_original_pretraining


@pytest.fixture(scope="module")
def config():
    return LxmertConfig.preset("tiny")


def seeded(cls, config, seed=0):
    torch.manual_seed(seed)
    return cls(config).eval()


def same_outputs(a, b, config, **kw):
    inputs = make_inputs(config, visual_mask=True)
    with torch.no_grad():
        x, y = a(**inputs, **kw), b(**inputs, **kw)
    return x, y


def test_saved_directory_loads_in_transformers(tmp_path, config):
    ours = seeded(LxmertForPreTraining, config)
    save_pretrained(ours, tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]
    theirs = transformers.LxmertForPreTraining.from_pretrained(tmp_path / "ckpt").eval()
    assert theirs.config.l_layers == config.l_layers and theirs.config.num_qa_labels == config.num_qa_labels
    assert theirs.cls.predictions.decoder.weight.data_ptr() == theirs.lxmert.embeddings.word_embeddings.weight.data_ptr()
    x, y = same_outputs(ours, theirs, config)
    torch.testing.assert_close(x.prediction_logits, y.prediction_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x.question_answering_score, y.question_answering_score, atol=1e-5, rtol=1e-5)
    # and back: our loader restores the same model, with the config's loss options
    back = load_pretrained(tmp_path / "ckpt").eval()
    assert type(back) is LxmertForPreTraining and back.config == ours.config
    assert back.cls.predictions.decoder.weight is back.lxmert.embeddings.word_embeddings.weight
    z, _ = same_outputs(back, ours, config)
    torch.testing.assert_close(z.prediction_logits, x.prediction_logits)


def test_transformers_directory_loads_here(tmp_path, config):
    torch.manual_seed(3)
    theirs = transformers.LxmertForQuestionAnswering(config.to_transformers()).eval()
    theirs.save_pretrained(tmp_path / "hub")
    ours = load_pretrained(tmp_path / "hub").eval()
    assert type(ours) is LxmertForQuestionAnswering
    x, y = same_outputs(ours, theirs, config)
    torch.testing.assert_close(x.question_answering_score, y.question_answering_score, atol=1e-5, rtol=1e-5)


def test_legacy_pytorch_model_bin_directory(tmp_path, config):
    theirs = transformers.LxmertForPreTraining(config.to_transformers()).eval()
    directory = tmp_path / "legacy"
    directory.mkdir()
    theirs.config.to_json_file(directory / "config.json")
    torch.save(theirs.state_dict(), directory / "pytorch_model.bin")
    ours = load_pretrained(directory).eval()
    x, y = same_outputs(ours, theirs, config)
    torch.testing.assert_close(x.cross_relationship_score, y.cross_relationship_score, atol=1e-5, rtol=1e-5)


def test_original_pretraining_pth_imports(tmp_path, config):
    source = seeded(LxmertForPreTraining, config, seed=5)
    torch.save(to_original_pretraining(source.state_dict()), tmp_path / "Epoch20_LXRT.pth")
    # no config in an original file: the shape comes from the tensors, the head count
    # (BERT's 64-wide heads unless told) from the caller
    ours, report = load_pretrained(tmp_path / "Epoch20_LXRT.pth", return_report=True,
                                   num_attention_heads=config.num_attention_heads)
    assert type(ours) is LxmertForPreTraining
    assert ours.config.l_layers == config.l_layers and ours.config.num_qa_labels == config.num_qa_labels
    assert not report.missing and not report.skipped_heads
    x, y = same_outputs(ours.eval(), source, config)
    torch.testing.assert_close(x.prediction_logits, y.prediction_logits)


def test_original_vqa_finetuned_pth_imports(tmp_path, config):
    source = seeded(LxmertForQuestionAnswering, config, seed=6)
    torch.save(to_original_finetuned(source.state_dict(), "answer_head.logit_fc."), tmp_path / "BEST.pth")
    state, _, _, kind = read_checkpoint(tmp_path / "BEST.pth")
    assert kind == "qa" and "answer_head.logit_fc.3.weight" in state
    ours = load_pretrained(tmp_path / "BEST.pth", num_attention_heads=4).eval()
    assert type(ours) is LxmertForQuestionAnswering
    x, y = same_outputs(ours, source, config)
    torch.testing.assert_close(x.question_answering_score, y.question_answering_score)


def test_original_nlvr2_finetuned_pth_imports(tmp_path, config):
    source = seeded(LxmertForNLVR2, config, seed=7)
    torch.save(to_original_finetuned(source.state_dict(), "logit_fc."), tmp_path / "BEST.pth")
    ours = load_pretrained(tmp_path / "BEST.pth", num_attention_heads=4).eval()
    assert type(ours) is LxmertForNLVR2
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, config.vocab_size, (2, 6), generator=g)
    feats = torch.randn(2, 2, 5, config.visual_feat_dim, generator=g)
    pos = torch.rand(2, 2, 5, 4, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids, feats, pos).logits, source(ids, feats, pos).logits)


def test_nlvr2_pairs_the_sentence_with_each_image(config):
    model = seeded(LxmertForNLVR2, config)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, config.vocab_size, (2, 6), generator=g)
    feats = torch.randn(2, 2, 5, config.visual_feat_dim, generator=g)
    pos = torch.rand(2, 2, 5, 4, generator=g)
    with torch.no_grad():
        out = model(ids, feats, pos, labels=torch.tensor([0, 1]))
        left = model.lxmert(ids, feats[:, 0], pos[:, 0]).pooled_output
        right = model.lxmert(ids, feats[:, 1], pos[:, 1]).pooled_output
    torch.testing.assert_close(out.pooled_output, torch.cat([left, right], dim=1))
    assert out.logits.shape == (2, 2) and out.loss.dim() == 0


def test_pretraining_checkpoint_starts_a_qa_model_with_answers_matched_by_name(tmp_path, config):
    source_answers = ["yes", "no", "2", "man", "gray", "red", "dog", "cat", "blue", "tree"]
    target_answers = ["No", "two", "the man", "grey", "unseen", "yes"]
    pre = seeded(LxmertForPreTraining, config.replace(answers=source_answers))
    save_pretrained(pre, tmp_path / "pre")
    qa, report = load_pretrained(tmp_path / "pre", LxmertForQuestionAnswering, answers=target_answers,
                                 return_report=True)
    assert report.answers_matched == 5 and report.answers_total == 6
    assert report.skipped_heads  # cls.*, obj_predict_head.*
    src_w = pre.answer_head.logit_fc[3].weight
    dst_w = qa.answer_head.logit_fc[3].weight
    for row, source_row in [(0, 1), (1, 2), (2, 3), (3, 4), (5, 0)]:
        torch.testing.assert_close(dst_w[row], src_w[source_row])
    assert torch.all(dst_w[4] == 0) and qa.answer_head.logit_fc[3].bias[4] == 0
    torch.testing.assert_close(qa.answer_head.logit_fc[0].weight, pre.answer_head.logit_fc[0].weight)
    assert qa.config.answers == target_answers


def test_wrong_shapes_give_one_readable_report(tmp_path, config):
    source = seeded(LxmertForPreTraining, config.replace(hidden_size=48, intermediate_size=96))
    save_pretrained(source, tmp_path / "wide")
    with pytest.raises(CheckpointError) as err:
        load_pretrained(tmp_path / "wide", config=config)
    text = str(err.value)
    assert str(tmp_path / "wide") in text and "shape mismatches" in text
    assert "lxmert.embeddings.word_embeddings.weight: checkpoint (120, 48) vs model (120, 32)" in text
    assert "\n" not in text


def test_missing_and_unknown_keys_are_reported(tmp_path, config):
    state = to_original_pretraining(seeded(LxmertForPreTraining, config).state_dict())
    del state["module.bert.encoder.x_layers.0.visn_output.dense.weight"]
    state["module.bert.encoder.extra.weight"] = torch.zeros(2)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"1 missing from the checkpoint: "
                                              r"lxmert.encoder.x_layers.0.visn_output.dense.weight.*"
                                              r"1 unexpected in the checkpoint: lxmert.encoder.extra.weight"):
        load_pretrained(tmp_path / "bad.pth", config=config)


def test_unreadable_files_name_the_file(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth: not a readable torch checkpoint"):
        load_pretrained(tmp_path / "junk.pth")
    (tmp_path / "d").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_pretrained(tmp_path / "d")
    (tmp_path / "d" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(CheckpointError, match="not 'lxmert'"):
        load_pretrained(tmp_path / "d")


def test_pickles_with_code_are_refused(tmp_path):
    torch.save({"w": torch.zeros(1), "obj": object()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="refused: the file contains code"):
        load_pretrained(tmp_path / "evil.pth")


def test_config_round_trips_through_transformers():
    config = LxmertConfig.preset("small", visual_label_loss_scope="masked", num_qa_labels=3,
                                 answers=["yes", "no", "2"])
    theirs = config.to_transformers()
    assert theirs.l_layers == 3 and theirs.visual_loss_normalizer == pytest.approx(1 / 0.15)
    assert LxmertConfig.from_transformers(theirs) == config
    assert LxmertConfig.preset("base") == LxmertConfig()
    with pytest.raises(ValueError, match="unknown LXMERT preset"):
        LxmertConfig.preset("huge")
    with pytest.raises(ValueError, match="visual_label_loss_scope"):
        LxmertConfig(visual_label_loss_scope="some")


def test_nlvr2_directory_round_trip(tmp_path, config):
    source = seeded(LxmertForNLVR2, config)
    save_pretrained(source, tmp_path / "nlvr2")
    back = load_pretrained(tmp_path / "nlvr2").eval()
    assert type(back) is LxmertForNLVR2
    for (name, a), b in zip(source.state_dict().items(), back.state_dict().values()):
        assert torch.equal(a, b), name
    # transformers reads the encoder of it
    encoder = transformers.LxmertModel.from_pretrained(tmp_path / "nlvr2")
    torch.testing.assert_close(encoder.pooler.dense.weight, source.lxmert.pooler.dense.weight)


def test_directory_without_architectures_is_recognised_by_its_heads(tmp_path, config):
    save_pretrained(seeded(LxmertForQuestionAnswering, config), tmp_path / "qa")
    values = json.loads((tmp_path / "qa" / "config.json").read_text())
    del values["architectures"]
    (tmp_path / "qa" / "config.json").write_text(json.dumps(values))
    assert type(load_pretrained(tmp_path / "qa")) is LxmertForQuestionAnswering


def test_transfer_answer_head_between_models(config):
    from model import lxmert_answer_key, transfer_answer_head

    pre = seeded(LxmertForPreTraining, config)
    qa = seeded(LxmertForQuestionAnswering, config.replace(num_qa_labels=3), seed=9)
    source = ["yes", "no", "1", "gray", "man", "a", "b", "c", "d", "e"]
    matched = transfer_answer_head(pre.answer_head, {a: i for i, a in enumerate(source)},
                                   qa.answer_head, ["One", "The man.", "zebra"])
    assert matched == 2
    assert lxmert_answer_key("The man.") == "man" and lxmert_answer_key("An apple") == "apple"
    torch.testing.assert_close(qa.answer_head.logit_fc[3].weight[0], pre.answer_head.logit_fc[3].weight[2])
    torch.testing.assert_close(qa.answer_head.logit_fc[2].weight, pre.answer_head.logit_fc[2].weight)
    assert torch.all(qa.answer_head.logit_fc[3].weight[2] == 0)

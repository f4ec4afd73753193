"""Same weights, same numbers: this model against transformers' LXMERT (fp32, eval mode)."""

import pytest
import torch
import transformers

from model import LxmertConfig, LxmertForPreTraining, LxmertForQuestionAnswering, LxmertModel
from tests.helpers.lxmert_inputs import make_inputs, make_labels

ATOL = 1e-5


def twin(ours_cls, theirs_cls, config, seed=0):
    torch.manual_seed(seed)
    ours = ours_cls(config).eval()
    theirs = theirs_cls(config.to_transformers()).eval()
    result = theirs.load_state_dict(ours.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    return ours, theirs


@pytest.fixture(scope="module")
def config():
    return LxmertConfig.preset("tiny")


def close(a, b):
    assert a.shape == b.shape
    torch.testing.assert_close(a, b, atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("visual_mask", [False, True])
def test_backbone_matches_transformers(config, visual_mask):
    ours, theirs = twin(LxmertModel, transformers.LxmertModel, config)
    inputs = make_inputs(config, visual_mask=visual_mask)
    with torch.no_grad():
        a = ours(**inputs, output_hidden_states=True)
        b = theirs(**inputs, output_hidden_states=True)
    close(a.language_output, b.language_output)
    close(a.vision_output, b.vision_output)
    close(a.pooled_output, b.pooled_output)
    assert len(a.language_hidden_states) == len(b.language_hidden_states)
    for x, y in zip(a.vision_hidden_states, b.vision_hidden_states):
        close(x, y)


def test_attention_probabilities_match_transformers(config):
    ours, theirs = twin(LxmertModel, transformers.LxmertModel, config)
    inputs = make_inputs(config, visual_mask=True)
    with torch.no_grad():
        a = ours(**inputs, output_attentions=True)
        b = theirs(**inputs, output_attentions=True)
    for name in ("language_attentions", "vision_attentions", "cross_encoder_attentions"):
        for x, y in zip(getattr(a, name), getattr(b, name)):
            close(x, y)
    # the direction transformers does not return: objects attend over words, padding gets 0
    v2l = a.cross_encoder_attentions_vision[0]
    assert v2l.shape == (3, config.num_attention_heads, 7, 9)
    assert torch.all(v2l[1, :, :, 5:] == 0)
    close(v2l.sum(-1), torch.ones_like(v2l.sum(-1)))
    # the probabilities path and the SDPA path give the same hidden states
    close(a.language_output, ours(**inputs).language_output)


@pytest.mark.parametrize("gather", [True, False])
def test_pretraining_losses_match_transformers(config, gather):
    cfg = config.replace(gather_labelled_rows=gather)
    ours, theirs = twin(LxmertForPreTraining, transformers.LxmertForPreTraining, cfg)
    inputs = make_inputs(cfg, visual_mask=True)
    labels = make_labels(cfg)
    with torch.no_grad():
        a = ours(**inputs, **labels)
        b = theirs(**inputs, **labels)
        # transformers' total, one task at a time, to check each of our per-task terms
        for task, kwargs in {"mlm": dict(labels=labels["labels"]),
                             "matched": dict(matched_label=labels["matched_label"]),
                             "qa": dict(ans=labels["ans"])}.items():
            close(a.loss_per_task[task], theirs(**inputs, **kwargs).loss)
        visual = theirs(**inputs, obj_labels=labels["obj_labels"]).loss
    close(a.loss, b.loss)
    close(a.loss_per_task["obj"] + a.loss_per_task["attr"] + a.loss_per_task["feat"], visual)
    assert set(a.loss_per_task) == {"mlm", "matched", "obj", "attr", "feat", "qa"}
    assert all(v.dim() == 0 for v in a.loss_per_task.values())
    close(a.loss, sum(a.loss_per_task.values()))          # no task weights given: the plain sum


def test_pretraining_logits_without_labels_match_transformers(config):
    ours, theirs = twin(LxmertForPreTraining, transformers.LxmertForPreTraining, config)
    inputs = make_inputs(config)
    with torch.no_grad():
        a = ours(**inputs)
        b = theirs(**inputs)
    assert a.loss is None and b.loss is None
    close(a.prediction_logits, b.prediction_logits)
    close(a.cross_relationship_score, b.cross_relationship_score)
    close(a.question_answering_score, b.question_answering_score)


def test_gathered_heads_give_identical_loss_and_gradients(config):
    torch.manual_seed(0)
    dense = LxmertForPreTraining(config.replace(gather_labelled_rows=False)).eval()
    sparse = LxmertForPreTraining(config.replace(gather_labelled_rows=True)).eval()
    sparse.load_state_dict(dense.state_dict())
    inputs, labels = make_inputs(config), make_labels(config)
    a, b = dense(**inputs, **labels), sparse(**inputs, **labels)
    a.loss.backward()
    b.loss.backward()
    close(a.loss, b.loss)
    assert b.masked_lm_logits.shape == (4, config.vocab_size)  # only the 4 labelled positions
    assert b.qa_logits.shape == (2, config.num_qa_labels)      # only the 2 rows with an answer
    for (name, p), q in zip(dense.named_parameters(), sparse.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-5, msg=name)


def test_question_answering_matches_transformers(config):
    ours, theirs = twin(LxmertForQuestionAnswering, transformers.LxmertForQuestionAnswering, config)
    inputs = make_inputs(config, visual_mask=True)
    labels = torch.tensor([1, 0, 7])
    with torch.no_grad():
        a = ours(**inputs, labels=labels)
        b = theirs(**inputs, labels=labels)
    close(a.question_answering_score, b.question_answering_score)
    close(a.loss, b.loss)

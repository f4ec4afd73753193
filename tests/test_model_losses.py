"""Loss rules beyond transformers' defaults: the masked-objects variant, the normaliser, task
weights, empty label sets, the padding-row quirk, and bf16 autocast."""

import pytest
import torch
import torch.nn.functional as F

from model import LxmertConfig, LxmertForPreTraining, LxmertForQuestionAnswering, soft_score_bce_loss
from tests.helpers.lxmert_inputs import make_inputs, make_labels


@pytest.fixture(scope="module")
def config():
    return LxmertConfig.preset("tiny")


@pytest.fixture(scope="module")
def model(config):
    torch.manual_seed(0)
    return LxmertForPreTraining(config).eval()


def test_default_normaliser_is_the_reference_one_over_mask_rate(config):
    assert config.visual_loss_normalizer == pytest.approx(1 / 0.15, rel=1e-12)


def test_visual_losses_follow_the_reference_formula(model, config):
    inputs, labels = make_inputs(config), make_labels(config)
    with torch.no_grad():
        out = model(**inputs, obj_labels=labels["obj_labels"])
    scores = out.visual_prediction_scores
    obj, conf = labels["obj_labels"]["obj"]
    feats, feat_mask = labels["obj_labels"]["feat"]
    n = obj.numel()  # B * num_boxes: the divisor of every visual loss
    expected_obj = (F.cross_entropy(scores["obj"].reshape(n, -1), obj.reshape(-1), reduction="none")
                    * conf.reshape(-1)).sum() / n / 0.15
    expected_feat = (F.smooth_l1_loss(scores["feat"], feats, reduction="none").mean(-1)
                     * feat_mask).sum() / n / 0.15
    torch.testing.assert_close(out.loss_per_task["obj"], expected_obj)
    torch.testing.assert_close(out.loss_per_task["feat"], expected_feat)
    assert out.loss_per_task["mlm"] == 0 and out.loss_per_task["qa"] == 0


def test_masked_scope_restricts_obj_and_attr_to_masked_objects(model, config):
    inputs, labels = make_inputs(config), make_labels(config)
    with torch.no_grad():
        every = model(**inputs, obj_labels=labels["obj_labels"])
        masked = model(**inputs, obj_labels=labels["obj_labels"], visual_label_loss_scope="masked")
        obj, conf = labels["obj_labels"]["obj"]
        feat_mask = labels["obj_labels"]["feat"][1]
        # the same thing by hand: confidences zeroed on unmasked objects, rule "all"
        by_hand = dict(labels["obj_labels"])
        by_hand["obj"] = (obj, conf * feat_mask)
        by_hand["attr"] = (labels["obj_labels"]["attr"][0], labels["obj_labels"]["attr"][1] * feat_mask)
        manual = model(**inputs, obj_labels=by_hand)
    for key in ("obj", "attr", "feat"):
        torch.testing.assert_close(masked.loss_per_task[key], manual.loss_per_task[key])
    assert masked.loss_per_task["obj"] < every.loss_per_task["obj"]
    torch.testing.assert_close(masked.loss_per_task["feat"], every.loss_per_task["feat"])
    # the config option does the same as the forward option
    cfg_model = LxmertForPreTraining(config.replace(visual_label_loss_scope="masked")).eval()
    cfg_model.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(cfg_model(**inputs, obj_labels=labels["obj_labels"]).loss, masked.loss)


def test_normaliser_and_task_weights(model, config):
    inputs, labels = make_inputs(config), make_labels(config)
    with torch.no_grad():
        base = model(**inputs, **labels)
        halved = model(**inputs, **labels, visual_loss_normalizer=config.visual_loss_normalizer / 2)
        no_qa = model(**inputs, **labels, loss_weights={"qa": 0.0, "mlm": 2.0})
    for key in ("obj", "attr", "feat"):
        torch.testing.assert_close(halved.loss_per_task[key], base.loss_per_task[key] / 2)
    per = base.loss_per_task
    torch.testing.assert_close(base.loss, sum(per.values()))
    torch.testing.assert_close(no_qa.loss, sum(per.values()) - per["qa"] + per["mlm"])
    torch.testing.assert_close(no_qa.loss_per_task["qa"], per["qa"])  # still reported


def test_batches_without_mlm_or_qa_labels_give_zero_not_nan(model, config):
    inputs, labels = make_inputs(config), make_labels(config)
    labels["labels"].fill_(-100)
    labels["ans"].fill_(-100)
    for gather in (True, False):
        model.config.gather_labelled_rows = gather
        out = model(**inputs, **labels)
        assert out.loss_per_task["mlm"] == 0 and out.loss_per_task["qa"] == 0
        assert torch.isfinite(out.loss)
        out.loss.backward()
    model.config.gather_labelled_rows = None
    model.zero_grad()


def test_padding_rows_of_position_and_type_embeddings_get_no_gradient(config):
    """Quirk Q1: padding_idx=0 on all three embeddings (position 0 and type 0 never train)."""
    torch.manual_seed(1)
    model = LxmertForPreTraining(config)
    inputs, labels = make_inputs(config), make_labels(config)
    del inputs["token_type_ids"]
    model(**inputs, **labels).loss.backward()
    emb = model.lxmert.embeddings
    assert torch.all(emb.position_embeddings.weight.grad[0] == 0)
    assert emb.position_embeddings.weight.grad[1].abs().sum() > 0
    assert torch.all(emb.token_type_embeddings.weight.grad == 0)
    # the reference's from-scratch init: padding rows are random, not zero
    assert emb.position_embeddings.weight[0].abs().sum() > 0


def test_bf16_autocast_trains_and_stays_close_to_fp32(model, config):
    inputs, labels = make_inputs(config), make_labels(config)
    with torch.no_grad():
        reference = model(**inputs, **labels)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(**inputs, **labels)
    assert low.loss.dtype == torch.float32
    for key in ("mlm", "matched", "obj", "attr", "feat", "qa"):
        torch.testing.assert_close(low.loss_per_task[key], reference.loss_per_task[key], rtol=0.05, atol=0.05)
    train = LxmertForPreTraining(config)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = train(**inputs, **labels).loss
    loss.backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in train.parameters())


def test_qa_soft_score_loss_is_bce_times_answers(config):
    torch.manual_seed(2)
    qa = LxmertForQuestionAnswering(config).eval()
    inputs = make_inputs(config)
    targets = torch.zeros(3, config.num_qa_labels)
    targets[0, 1], targets[1, 3], targets[2, 3] = 1.0, 0.3, 0.9
    with torch.no_grad():
        out = qa(**inputs, labels=targets)
    logits = out.question_answering_score
    expected = F.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / 3
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(soft_score_bce_loss(logits, targets), expected)


def test_heads_follow_the_task_switches(config):
    cfg = config.replace(task_qa=False, visual_attr_loss=False)
    model = LxmertForPreTraining(cfg).eval()
    assert not hasattr(model, "answer_head") and set(model.obj_predict_head.decoder_dict) == {"obj", "feat"}
    inputs, labels = make_inputs(cfg), make_labels(cfg)
    with torch.no_grad():
        out = model(**inputs, **labels)
    assert out.loss_per_task["qa"] == 0 and out.loss_per_task["attr"] == 0
    torch.testing.assert_close(out.loss, out.loss_per_task["mlm"] + out.loss_per_task["matched"]
                               + out.loss_per_task["obj"] + out.loss_per_task["feat"])


@pytest.mark.slow
def test_torch_compile_gives_the_same_loss(model, config):
    compiled = torch.compile(model)
    inputs, labels = make_inputs(config), make_labels(config)
    with torch.no_grad():
        torch.testing.assert_close(compiled(**inputs, **labels).loss, model(**inputs, **labels).loss,
                                   atol=1e-5, rtol=1e-5)


def test_sentence_words_loss_is_the_cls_bag_of_words_cross_entropy(model, config):
    inputs, labels = make_inputs(config), make_labels(config)
    ids = inputs["input_ids"]
    words = ids.clone()
    words[:, 0] = -100                       # not a target: [CLS]
    words[0, 3:] = -100                      # a short row
    words[1] = -100                          # a row without targets counts for nothing
    with torch.no_grad():
        base = model(**inputs, **labels)
        out = model(**inputs, **labels, sentence_words=words)
        doubled = model(**inputs, **labels, sentence_words=words, loss_weights={"words": 2.0})
        cls_scores = model(**inputs).prediction_logits[:, 0]
    expected = []
    for row, scores in zip(words.tolist(), F.log_softmax(cls_scores, -1)):
        targets = [w for w in row if w != -100]
        if targets:                          # soft target: each word of the row 1/len(row)
            expected.append(-sum(scores[w] for w in targets) / len(targets))
    torch.testing.assert_close(out.loss_per_task["words"], torch.stack(expected).mean())
    torch.testing.assert_close(out.loss, base.loss + out.loss_per_task["words"])
    torch.testing.assert_close(doubled.loss, base.loss + 2 * out.loss_per_task["words"])
    assert "words" not in base.loss_per_task   # the reference's five tasks only, unless asked

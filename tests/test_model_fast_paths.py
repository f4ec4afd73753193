"""The model's fast paths against its plain ones: SDPA against the explicit attention math, the
cached Q/K/V weight against a fresh one, Linear weights cast once against autocast's per-call
cast, and float16 region features against float32 ones."""

import copy

import pytest
import torch

import model.modeling_lxmert as modeling
from model import LxmertConfig, LxmertForPreTraining, LxmertForQuestionAnswering
from tests.helpers.lxmert_inputs import make_inputs, make_labels


@pytest.fixture(scope="module")
def config():
    return LxmertConfig.preset("tiny")


def qa_model(config, seed=0):
    torch.manual_seed(seed)
    return LxmertForQuestionAnswering(config).eval()


def answers(model, inputs, bf16=False):
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        return model(**inputs).question_answering_score


def test_sdpa_path_equals_the_attention_math(config, monkeypatch):
    """Accelerators run SDPA, the CPU the explicit math: both give the same numbers."""
    model = qa_model(config)
    inputs = make_inputs(config, visual_mask=True)
    plain = answers(model, inputs)
    monkeypatch.setattr(modeling, "SDPA_DEVICES", modeling.SDPA_DEVICES | {"cpu"})
    fused = answers(model, inputs)
    torch.testing.assert_close(fused, plain, atol=1e-5, rtol=1e-5)

    pretraining = LxmertForPreTraining(config).eval()
    labels = make_labels(config)
    with torch.no_grad():
        sdpa_loss = pretraining(**inputs, **labels).loss
    monkeypatch.setattr(modeling, "SDPA_DEVICES", modeling.SDPA_DEVICES - {"cpu"})
    with torch.no_grad():
        math_loss = pretraining(**inputs, **labels).loss
    torch.testing.assert_close(sdpa_loss, math_loss, atol=1e-5, rtol=1e-5)


def test_cached_qkv_weight_follows_every_weight_change(config):
    """Inference keeps the fused Q/K/V weight between calls; any change of a weight (an
    optimiser step, load_state_dict, a cast, train mode) must be seen at once."""
    model = qa_model(config)
    inputs = make_inputs(config)
    first = answers(model, inputs)
    torch.testing.assert_close(answers(model, inputs), first, atol=0, rtol=0)

    other = qa_model(config, seed=1)
    model.load_state_dict(other.state_dict())
    torch.testing.assert_close(answers(model, inputs), answers(other, inputs), atol=0, rtol=0)

    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model.train()
    out = model(**inputs).question_answering_score
    out.square().mean().backward()
    optimizer.step()
    model.eval()
    fresh = copy.deepcopy(model)
    for module in fresh.modules():
        if isinstance(module, modeling.LxmertAttention):
            module._fused_cache = None
    stepped = answers(model, inputs)
    assert not torch.equal(stepped, answers(other, inputs))
    torch.testing.assert_close(stepped, answers(fresh, inputs), atol=0, rtol=0)

    # an in-place change under no_grad, as an optimiser makes it, with the model left in eval
    with torch.no_grad():
        model.lxmert.encoder.layer[0].attention.self.key.weight.mul_(2.0)
    changed = answers(model, inputs)
    assert not torch.equal(changed, stepped)
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(changed, answers(fresh, inputs), atol=0, rtol=0)


def test_linear_weights_cast_once_give_autocasts_numbers(config):
    """bf16 weights held by the model equal autocast's cast of the fp32 weights on every call."""
    model = qa_model(config)
    inputs = make_inputs(config, visual_mask=True)
    autocast = answers(model, inputs, bf16=True)
    cast = copy.deepcopy(model).cast_linear_weights(torch.bfloat16)
    assert cast.answer_head.logit_fc[0].weight.dtype == torch.bfloat16
    assert cast.lxmert.embeddings.word_embeddings.weight.dtype == torch.float32
    assert cast.lxmert.embeddings.LayerNorm.weight.dtype == torch.float32
    torch.testing.assert_close(answers(cast, inputs, bf16=True), autocast, atol=0, rtol=0)
    fp32 = answers(model, inputs)
    assert (answers(cast, inputs, bf16=True).float() - fp32).abs().max() < 0.05


def test_tied_mlm_decoder_keeps_the_embeddings_precision(config):
    model = LxmertForPreTraining(config).cast_linear_weights(torch.bfloat16)
    assert model.cls.predictions.decoder.weight is model.lxmert.embeddings.word_embeddings.weight
    assert model.cls.predictions.decoder.weight.dtype == torch.float32
    assert model.cls.seq_relationship.weight.dtype == torch.bfloat16


def test_float16_region_features_are_taken_as_they_are(config):
    """The store's float16 features may go to the model without a float32 copy on the host."""
    model = qa_model(config)
    inputs = make_inputs(config)
    half = inputs["visual_feats"].half()
    as_float = answers(model, {**inputs, "visual_feats": half.float()})
    torch.testing.assert_close(answers(model, {**inputs, "visual_feats": half}), as_float, atol=0, rtol=0)
    torch.testing.assert_close(answers(model, {**inputs, "visual_feats": half}, bf16=True),
                               answers(model, {**inputs, "visual_feats": half.float()}, bf16=True), atol=0, rtol=0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_model_equals_the_cpu_model(config):
    """On a GPU (SDPA, cuBLAS) the same weights give the CPU's numbers: fp32 within 1e-4
    (TF32 off), bf16 within bf16 rounding; the pretraining loss and its gradients too."""
    torch.backends.cuda.matmul.allow_tf32 = False
    model = qa_model(config)
    inputs = make_inputs(config, visual_mask=True)
    cpu = answers(model, inputs)
    gpu_model = copy.deepcopy(model).cuda()
    on_gpu = {k: v.cuda() for k, v in inputs.items()}
    with torch.no_grad():
        gpu = gpu_model(**on_gpu).question_answering_score.cpu()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            gpu_bf16 = gpu_model(**on_gpu).question_answering_score.float().cpu()
    torch.testing.assert_close(gpu, cpu, atol=1e-4, rtol=1e-4)
    assert (gpu_bf16 - cpu).abs().max() < 0.05

    torch.manual_seed(0)
    pretraining = LxmertForPreTraining(config).eval()
    gpu_pretraining = copy.deepcopy(pretraining).cuda()
    labels = make_labels(config)

    def move(x):
        if isinstance(x, torch.Tensor):
            return x.cuda()
        if isinstance(x, dict):
            return {k: move(v) for k, v in x.items()}
        return tuple(move(v) for v in x)
    cpu_loss = pretraining(**inputs, **labels).loss
    gpu_loss = gpu_pretraining(**move(inputs), **move(labels)).loss
    cpu_loss.backward()
    gpu_loss.backward()
    torch.testing.assert_close(gpu_loss.cpu(), cpu_loss, atol=1e-4, rtol=1e-4)
    for (name, p), q in zip(pretraining.named_parameters(), gpu_pretraining.parameters()):
        if p.grad is not None:
            torch.testing.assert_close(q.grad.cpu(), p.grad, atol=1e-4, rtol=1e-3, msg=name)

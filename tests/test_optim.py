"""The optimisers: BertAdam's multi-tensor update against its per-parameter loop (same numbers,
same state dict), and the AdamW that `build_optimizer` picks per device."""

from __future__ import annotations

import copy

import pytest
import torch

from pipeline.training import BertAdam, build_optimizer


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Embedding(50, 12), torch.nn.Linear(12, 16), torch.nn.LayerNorm(16),
                               torch.nn.GELU(), torch.nn.Linear(16, 5))


def _grads(model: torch.nn.Module, step: int) -> None:
    """Set gradients of varied size (some far above 1, for the per-parameter clip), none on the
    last bias in odd steps: a parameter without a gradient is skipped and keeps its step count."""
    g = torch.Generator().manual_seed(1000 + step)
    params = list(model.parameters())
    for i, p in enumerate(params):
        p.grad = torch.randn(p.shape, generator=g) * (10.0 ** (i % 3 - 1))
    if step % 2:
        params[-1].grad = None


def _run(optimizer: torch.optim.Optimizer, model: torch.nn.Module, steps: range, lrs=None) -> None:
    for step in steps:
        _grads(model, step)
        if lrs is not None:
            optimizer.param_groups[0]["lr"] = lrs[step]
        optimizer.step()


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


@pytest.mark.parametrize("weight_decay,max_grad_norm", [(0.01, -1.0), (0.0, -1.0), (0.01, 0.5)])
def test_bert_adam_multi_tensor_update_equals_the_per_parameter_loop(weight_decay, max_grad_norm):
    plain, multi = _model(), _model()
    groups = lambda m: [{"params": list(m[:2].parameters())},                       # noqa: E731
                        {"params": list(m[2:].parameters()), "weight_decay": 0.0}]
    kw = dict(lr=1e-2, weight_decay=weight_decay, max_grad_norm=max_grad_norm)
    a = BertAdam(groups(plain), foreach=False, **kw)
    b = BertAdam(groups(multi), **kw)
    lrs = [0.0, 5e-3, 1e-2, 1e-2, 7e-3, 2e-3]
    _run(a, plain, range(6), lrs)
    _run(b, multi, range(6), lrs)
    assert _same(plain, multi)
    assert not _same(plain, _model())                        # it did move
    sa, sb = a.state_dict(), b.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    for i, state in sa["state"].items():
        assert state["step"] == sb["state"][i]["step"]
        assert torch.equal(state["exp_avg"], sb["state"][i]["exp_avg"])
        assert torch.equal(state["exp_avg_sq"], sb["state"][i]["exp_avg_sq"])
    assert sa["state"][len(sa["state"]) - 1]["step"] == 3    # the bias without gradient every other step


def test_bert_adam_state_dict_round_trips_between_the_two_implementations():
    uninterrupted = _model()
    reference = BertAdam(uninterrupted.parameters(), lr=1e-2, foreach=False)
    _run(reference, uninterrupted, range(8))

    for first, second in ((True, False), (False, True), (True, True)):
        model = _model()
        before = BertAdam(model.parameters(), lr=1e-2, foreach=first)
        _run(before, model, range(4))
        saved = copy.deepcopy(before.state_dict())
        resumed_model = copy.deepcopy(model)
        after = BertAdam(resumed_model.parameters(), lr=1e-2, foreach=second)
        after.load_state_dict(saved)
        _run(after, resumed_model, range(4, 8))
        assert _same(resumed_model, uninterrupted), (first, second)


def test_bert_adam_refuses_sparse_gradients_and_bad_settings():
    emb = torch.nn.Embedding(10, 4, sparse=True)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        BertAdam(emb.parameters()).step()
    with pytest.raises(ValueError, match="invalid BertAdam settings"):
        BertAdam(emb.parameters(), betas=(1.0, 0.999))


def test_build_optimizer_uses_fused_adamw_on_cuda_only_and_fused_gives_the_same_numbers():
    model = _model()
    settings = dict(lr=1e-2, weight_decay=0.01, betas=(0.9, 0.999), eps=1e-6)
    assert not build_optimizer(model, "adamw", **settings).defaults["fused"]      # CPU: the for-loop
    assert isinstance(build_optimizer(model, "bert", **settings), BertAdam)
    # the fused kernel (CPU has one too) against the default implementation
    fused_model = _model()
    loop = build_optimizer(model, "adamw", **settings)
    fused = build_optimizer(fused_model, "adamw", fused=True, **settings)
    assert fused.defaults["fused"]
    _run(loop, model, range(5))
    _run(fused, fused_model, range(5))
    for x, y in zip(model.parameters(), fused_model.parameters()):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'"):
        build_optimizer(model, "sgd", **settings)

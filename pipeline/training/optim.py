"""Optimisers: torch AdamW, or the reference's BertAdam.

BertAdam (pytorch-pretrained-bert, as used by LXMERT) differs from AdamW in three ways that
change results (reference Q5): no bias correction of the moments, eps added to sqrt(v)
(as AdamW), and weight decay applied to every parameter (LayerNorm and biases included).
The update is  p -= lr * (m / (sqrt(v) + eps) + weight_decay * p).
The schedule is not inside the optimiser here: `schedule.warmup_linear_schedule` sets the lr
of each step, which gives the same numbers as BertAdam's built-in schedule.
"""

from __future__ import annotations

from typing import Iterable

import torch


class BertAdam(torch.optim.Optimizer):
    def __init__(self, params: Iterable, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.01, max_grad_norm: float = -1.0):
        if lr < 0 or eps < 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"invalid BertAdam settings lr={lr} betas={betas} eps={eps}")
        # max_grad_norm > 0 clips each parameter's gradient on its own, as pytorch-pretrained-bert's
        # BertAdam can; off by default because the loop clips the global norm (reference recipe).
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      max_grad_norm=max_grad_norm))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.is_sparse:
                    raise RuntimeError("BertAdam does not support sparse gradients")
                if group["max_grad_norm"] > 0:
                    torch.nn.utils.clip_grad_norm_(p, group["max_grad_norm"])
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_(grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                update = m / (v.sqrt() + group["eps"])
                if group["weight_decay"] > 0:
                    update.add_(p, alpha=group["weight_decay"])
                p.add_(update, alpha=-group["lr"])
                state["step"] += 1
        return loss


OPTIMIZERS = ("bert", "adamw")


def build_optimizer(model: torch.nn.Module, name: str, *, lr: float, weight_decay: float,
                    betas: tuple[float, float], eps: float) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "bert":
        return BertAdam(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    if name == "adamw":
        # the usual BERT practice: no decay on biases and LayerNorm weights (1-d tensors)
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                  {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=betas, eps=eps)
    raise ValueError(f"unknown optimizer {name!r}; choose from {OPTIMIZERS}")

"""Optimisers: torch AdamW, or the reference's BertAdam.

BertAdam (pytorch-pretrained-bert, as used by LXMERT) differs from AdamW in three ways that
change results (reference Q5): no bias correction of the moments, eps added to sqrt(v)
(as AdamW), and weight decay applied to every parameter (LayerNorm and biases included).
The update is  p -= lr * (m / (sqrt(v) + eps) + weight_decay * p).
The schedule is not inside the optimiser here: `schedule.warmup_linear_schedule` sets the lr
of each step, which gives the same numbers as BertAdam's built-in schedule.

Speed: BertAdam updates all parameters of a (device, dtype) at once with `torch._foreach_*`
(a few kernel launches per step instead of ~10 per parameter, which on a GPU is what an
optimiser step of a 200-tensor model costs); it does the same operations in the same order
as the per-parameter loop (`foreach=False`, kept as the readable statement of the
update), so the two give the same numbers. AdamW runs torch's fused kernel on CUDA.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable

import torch


class BertAdam(torch.optim.Optimizer):
    def __init__(self, params: Iterable, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.01, max_grad_norm: float = -1.0, *,
                 foreach: bool = True):
        if lr < 0 or eps < 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"invalid BertAdam settings lr={lr} betas={betas} eps={eps}")
        # max_grad_norm > 0 clips each parameter's gradient on its own, as pytorch-pretrained-bert's
        # BertAdam can; off by default because the loop clips the global norm (reference recipe).
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      max_grad_norm=max_grad_norm))
        # how the update is computed, not what: not a group setting, so a state dict saved by
        # one implementation loads into the other
        self.foreach = foreach

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if any(p.grad.is_sparse for p in params):
                raise RuntimeError("BertAdam does not support sparse gradients")
            for p in params:
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            update = self._update_foreach if self.foreach else self._update_each
            for same_kind in _by_device_and_dtype(params):
                update(group, same_kind)
            for p in params:
                self.state[p]["step"] += 1
        return loss

    def _update_each(self, group: dict, params: list[torch.Tensor]) -> None:
        """The update, one parameter at a time (pytorch-pretrained-bert's loop)."""
        beta1, beta2 = group["betas"]
        for p in params:
            grad = p.grad
            if group["max_grad_norm"] > 0:
                torch.nn.utils.clip_grad_norm_(p, group["max_grad_norm"])
            m, v = self.state[p]["exp_avg"], self.state[p]["exp_avg_sq"]
            m.mul_(beta1).add_(grad, alpha=1 - beta1)
            v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            update = m / (v.sqrt() + group["eps"])
            if group["weight_decay"] > 0:
                update.add_(p, alpha=group["weight_decay"])
            p.add_(update, alpha=-group["lr"])

    def _update_foreach(self, group: dict, params: list[torch.Tensor]) -> None:
        """The same update for a list of parameters of one device and dtype, in multi-tensor
        kernels, operation for operation as `_update_each`."""
        beta1, beta2 = group["betas"]
        grads = [p.grad for p in params]
        if group["max_grad_norm"] > 0:
            # clip_grad_norm_ of one tensor: coefficient max / (norm + 1e-6), at most 1
            for grad, norm in zip(grads, torch._foreach_norm(grads, 2.0)):
                grad.mul_(torch.clamp(group["max_grad_norm"] / (norm + 1e-6), max=1.0))
        exp_avgs = [self.state[p]["exp_avg"] for p in params]
        exp_avg_sqs = [self.state[p]["exp_avg_sq"] for p in params]
        torch._foreach_mul_(exp_avgs, beta1)
        torch._foreach_add_(exp_avgs, grads, alpha=1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
        denominators = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_add_(denominators, group["eps"])
        updates = torch._foreach_div(exp_avgs, denominators)
        del denominators
        if group["weight_decay"] > 0:
            torch._foreach_add_(updates, params, alpha=group["weight_decay"])
        torch._foreach_add_(params, updates, alpha=-group["lr"])


def _by_device_and_dtype(params: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """`params` in lists of one device and dtype each (what a multi-tensor kernel takes)."""
    groups: dict[tuple, list[torch.Tensor]] = defaultdict(list)
    for p in params:
        groups[(p.device, p.dtype)].append(p)
    return list(groups.values())


OPTIMIZERS = ("bert", "adamw")


def build_optimizer(model: torch.nn.Module, name: str, *, lr: float, weight_decay: float,
                    betas: tuple[float, float], eps: float, fused: bool | None = None) -> torch.optim.Optimizer:
    """The optimiser `name` over the model's trainable parameters. `fused` (AdamW): torch's
    fused kernel; None = on CUDA only (elsewhere the for-loop implementation, whose numbers
    earlier CPU runs were made with)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "bert":
        return BertAdam(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    if name == "adamw":
        if fused is None:
            fused = bool(params) and all(p.is_cuda for p in params)
        # the usual BERT practice: no decay on biases and LayerNorm weights (1-d tensors)
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                  {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=betas, eps=eps,
                                 fused=fused or None)
    raise ValueError(f"unknown optimizer {name!r}; choose from {OPTIMIZERS}")

"""LXMERT speed: this model against transformers', same process, same weights, same inputs.

Two workloads at the `base` size (9/5/5 layers, 768 wide), 20 tokens, 36 boxes:
  - pretraining step: zero_grad + forward with all five tasks' labels + backward (train mode);
  - QA inference: LxmertForQuestionAnswering (3129 answers) forward, eval mode, no_grad.
Variants: transformers and ours, each in fp32 and under bf16 autocast (CPU: fast only where the
CPU has bf16 matrix instructions, avx512_bf16/amx; CUDA: bf16 + SDPA), so the speed-up at equal
precision is separate from what autocast alone gives. Rounds are interleaved (one step of each
variant per round) so that load from other processes hits all variants alike; each variant's
fastest round (the least disturbed) gives the rates and ratios, its median is printed beside it.

Beside each time: the FLOPs of one step of that variant (counted with
torch.utils.flop_counter.FlopCounterMode, attention included), the achieved GFLOP/s, and its
fraction of the matmul peak of its precision (fp32 or bf16 GEMM, measured in the same run with
the same thread count, at the start and before each table; the best measurement is used). On
a shared machine only the ratios and the fractions of peak compare across runs; the load
average is printed at the start and the end.

    python bench/bench_model.py --batch 8 --rounds 5 [--threads 2] [--device cpu|cuda] [--compile]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula, sdpa_backward_flop_count, sdpa_flop_count

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine_info import MatmulPeak, load_average, machine_line  # noqa: E402
from model import LxmertConfig, LxmertForPreTraining, LxmertForQuestionAnswering  # noqa: E402


def make_batch(config: LxmertConfig, batch: int, device: str, seq: int = 20, boxes: int = 36, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, config.vocab_size, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.long)
    lengths = torch.randint(8, seq + 1, (batch,), generator=g)
    mask[torch.arange(seq)[None, :] >= lengths[:, None]] = 0
    ids[mask == 0] = 0
    feats = torch.randn(batch, boxes, config.visual_feat_dim, generator=g).abs()
    pos = torch.rand(batch, boxes, 4, generator=g)
    labels = torch.full((batch, seq), -100)
    chosen = (torch.rand(batch, seq, generator=g) < 0.15) & (mask == 1)
    chosen[:, 1] = True
    labels[chosen] = ids[chosen]
    feat_mask = (torch.rand(batch, boxes, generator=g) < 0.15).float()
    ans = torch.randint(0, config.num_qa_labels, (batch,), generator=g)
    ans[torch.rand(batch, generator=g) < 0.5] = -100
    ans[0] = 1
    inputs = dict(input_ids=ids, visual_feats=feats, visual_pos=pos, attention_mask=mask)
    targets = dict(
        labels=labels, matched_label=torch.randint(0, 2, (batch,), generator=g), ans=ans,
        obj_labels={"obj": (torch.randint(0, config.num_object_labels, (batch, boxes), generator=g),
                            torch.rand(batch, boxes, generator=g)),
                    "attr": (torch.randint(0, config.num_attr_labels, (batch, boxes), generator=g),
                             torch.rand(batch, boxes, generator=g)),
                    "feat": (feats.clone(), feat_mask)})

    def move(x):
        if isinstance(x, torch.Tensor):
            return x.to(device)
        if isinstance(x, dict):
            return {k: move(v) for k, v in x.items()}
        if isinstance(x, tuple):
            return tuple(move(v) for v in x)
        return x
    return move(inputs), move(targets)


def autocast(device: str, enabled: bool):
    return torch.autocast(device, dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def train_step(model, inputs, targets, device, bf16):
    def step():
        model.zero_grad(set_to_none=True)
        with autocast(device, bf16):
            loss = model(**inputs, **targets).loss
        loss.backward()
        return loss
    return step


def qa_step(model, inputs, device, bf16):
    @torch.no_grad()
    def step():
        with autocast(device, bf16):
            return model(**inputs).question_answering_score
    return step


def _count_cpu_sdpa() -> None:
    """Count the CPU flash-attention kernels too: FlopCounterMode knows only the CUDA ones, and
    SDPA on CPU dispatches to `_scaled_dot_product_flash_attention_for_cpu` (and its backward)."""
    from torch.utils.flop_counter import flop_registry

    aten = torch.ops.aten
    forward = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    backward = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if forward is not None and forward.default not in flop_registry and forward not in flop_registry:
        @register_flop_formula(forward)
        def _forward(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
            return sdpa_flop_count(query_shape, key_shape, value_shape)
    if backward is not None and backward.default not in flop_registry and backward not in flop_registry:
        @register_flop_formula(backward)
        def _backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
            return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def count_flops(step) -> int:
    """FLOPs of one call of `step` (matmuls, convolutions, attention; forward and backward)."""
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return counter.get_total_flops()


def measure(variants: dict, rounds: int, warmup: int, device: str) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    for _ in range(rounds):
        for name, fn in variants.items():
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return times


TRANSFORMERS_AT = {"fp32": "transformers fp32", "bf16": "transformers bf16 autocast"}


def report(title: str, times: dict[str, list[float]], flops: dict[str, int], peaks: MatmulPeak,
           batch: int) -> None:
    """One row per variant, against transformers at the same precision and against the GEMM peak
    (measured again here; the best of the run's measurements is used).

    Rates and ratios use each variant's fastest round: on a machine shared with other work a
    slow round measures the others' load, and the fastest is the least disturbed; the median
    is printed beside it so the spread shows.
    """
    peaks.measure()
    best = {name: min(values) for name, values in times.items()}
    rounds = len(next(iter(times.values())))
    print(f"\n{title} (batch {batch}; {rounds} interleaved rounds; load average {load_average()})")
    print(f"matmul peak, best of this run's measurements: {peaks.describe()}")
    print(f"{'variant':<28}{'best s':>8}{'median s':>9}{'GFLOP/step':>11}{'GFLOP/s':>9}{'of peak':>8}"
          f"{'vs transformers same precision':>32}")
    for name, seconds in best.items():
        precision = "bf16" if "bf16" in name else "fp32"
        rate = flops[name] / seconds / 1e9
        twin = TRANSFORMERS_AT[precision] if not name.startswith("transformers") else None
        versus = (f"{best[twin] / seconds:.2f}x" if twin in best else "-")
        print(f"{name:<28}{seconds:>8.3f}{statistics.median(times[name]):>9.3f}{flops[name] / 1e9:>11.1f}"
              f"{rate:>9.1f}{rate / peaks[precision]:>8.1%} {versus:>31}")
    base = best.get("transformers fp32")
    if base is not None:
        others = ", ".join(f"{name} {base / seconds:.2f}x" for name, seconds in best.items()
                           if name != "transformers fp32")
        print(f"speed vs transformers fp32 (best rounds): {others}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[8])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(ours, bf16)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["train", "qa"])
    args = parser.parse_args()
    import transformers

    torch.set_num_threads(args.threads)
    device = args.device
    _count_cpu_sdpa()
    print(machine_line())
    print(f"# transformers {transformers.__version__}, device {device}")
    peaks = MatmulPeak({"fp32": torch.float32, "bf16": torch.bfloat16}, device)
    print(f"# matmul peak at the start (2048^3 GEMM, best of >=1.5 s, {torch.get_num_threads()} threads): "
          f"{peaks.describe()}")
    config = LxmertConfig.preset("base")

    torch.manual_seed(0)
    ours = LxmertForPreTraining(config).to(device).train()
    theirs = transformers.LxmertForPreTraining(config.to_transformers()).to(device).train()
    theirs.load_state_dict(ours.state_dict())
    qa_config = config.replace(num_qa_labels=3129)
    ours_qa = LxmertForQuestionAnswering(qa_config).to(device).eval()
    theirs_qa = transformers.LxmertForQuestionAnswering(qa_config.to_transformers()).to(device).eval()
    theirs_qa.load_state_dict(ours_qa.state_dict())
    compiled = torch.compile(ours) if args.compile else None

    for batch in args.batch:
        inputs, targets = make_batch(config, batch, device)
        if "train" not in args.skip:
            # the same loss on both sides, checked before timing
            theirs.eval(), ours.eval()
            with torch.no_grad():
                a, b = ours(**inputs, **targets).loss, theirs(**inputs, **targets).loss
            print(f"batch {batch}: pretraining loss ours {a.item():.6f} transformers {b.item():.6f}")
            theirs.train(), ours.train()
            variants = {"transformers fp32": train_step(theirs, inputs, targets, device, False),
                        "transformers bf16 autocast": train_step(theirs, inputs, targets, device, True),
                        "ours fp32": train_step(ours, inputs, targets, device, False),
                        "ours bf16 autocast": train_step(ours, inputs, targets, device, True)}
            flops = {name: count_flops(fn) for name, fn in variants.items()}
            if compiled is not None:
                variants["ours bf16 + compile"] = train_step(compiled, inputs, targets, device, True)
                flops["ours bf16 + compile"] = flops["ours bf16 autocast"]  # same graph; the counter cannot see inside
            report("pretraining step: forward + backward, five tasks",
                   measure(variants, args.rounds, args.warmup, device), flops, peaks, batch)
        if "qa" not in args.skip:
            variants = {"transformers fp32": qa_step(theirs_qa, inputs, device, False),
                        "transformers bf16 autocast": qa_step(theirs_qa, inputs, device, True),
                        "ours fp32": qa_step(ours_qa, inputs, device, False),
                        "ours bf16 autocast": qa_step(ours_qa, inputs, device, True)}
            flops = {name: count_flops(fn) for name, fn in variants.items()}
            report("QA inference (3129 answers)", measure(variants, args.rounds, args.warmup, device),
                   flops, peaks, batch)
    print(f"\n# load average at the end {load_average()}")


if __name__ == "__main__":
    main()

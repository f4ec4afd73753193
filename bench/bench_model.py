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

    python bench/bench_model.py --batch 8,32 --rounds 5 [--threads 2] [--json rows.json]
    python bench/bench_model.py --device cuda --batch 64,256 [--compile] --json rows.json

On a CPU each table is followed by one profiled step of our bf16 variant: the share of the
matmuls (and their own fraction of peak), of copies and of dropout's random numbers, which is
where the distance between a step and the GEMM peak goes. QA inference also times our model
with its Linear weights cast to bf16 once (`cast_linear_weights`, what predict does under bf16)
instead of by autocast on every call.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula, sdpa_backward_flop_count, sdpa_flop_count

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine_info import MatmulPeak, device_line, load_average, machine_line, nominal_peak_tflops  # noqa: E402
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
MATMUL_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_scaled_dot_product_flash_attention_for_cpu",
              "aten::_scaled_dot_product_flash_attention_for_cpu_backward"}
COPY_OPS = {"aten::copy_", "aten::cat"}
RANDOM_OPS = {"aten::bernoulli_", "aten::uniform_"}


def report(title: str, workload: str, times: dict[str, list[float]], flops: dict[str, int], peaks: MatmulPeak,
           batch: int, device: str, rows: list[dict]) -> None:
    """One row per variant, against transformers at the same precision and against the GEMM peak
    (measured again here; the best of the run's measurements is used); on a GPU with a known
    data-sheet peak also the model FLOPs utilisation (MFU: counted FLOPs / time / bf16 peak).

    Rates and ratios use each variant's fastest round: on a machine shared with other work a
    slow round measures the others' load, and the fastest is the least disturbed; the median
    is printed beside it so the spread shows.
    """
    peaks.measure()
    nominal = nominal_peak_tflops(device)
    best = {name: min(values) for name, values in times.items()}
    rounds = len(next(iter(times.values())))
    print(f"\n{title} (batch {batch}; {rounds} interleaved rounds; load average {load_average()})")
    print(f"matmul peak, best of this run's measurements: {peaks.describe()}")
    print(f"{'variant':<34}{'best s':>8}{'median s':>9}{'ex/s':>9}{'GFLOP/step':>11}{'GFLOP/s':>9}{'of peak':>8}"
          + (f"{'MFU':>7}" if nominal else "") + f"{'vs transformers same precision':>32}")
    base = best.get("transformers fp32")
    for name, seconds in best.items():
        precision = "bf16" if "bf16" in name else "fp32"
        rate = flops[name] / seconds / 1e9
        twin = TRANSFORMERS_AT[precision] if not name.startswith("transformers") else None
        versus = (f"{best[twin] / seconds:.2f}x" if twin in best else "-")
        mfu = rate / (nominal["bf16"] * 1e3) if nominal else None
        print(f"{name:<34}{seconds:>8.3f}{statistics.median(times[name]):>9.3f}{batch / seconds:>9.1f}"
              f"{flops[name] / 1e9:>11.1f}{rate:>9.1f}{rate / peaks[precision]:>8.1%}"
              + (f"{mfu:>7.1%}" if mfu is not None else "") + f" {versus:>31}")
        rows.append(dict(workload=workload, batch=batch, variant=name, device=device, best_s=seconds,
                         median_s=statistics.median(times[name]), examples_per_s=batch / seconds,
                         gflop_per_step=flops[name] / 1e9, gflop_per_s=rate,
                         fraction_of_peak=rate / peaks[precision], peak_gflop_per_s=peaks[precision], mfu=mfu,
                         vs_transformers_fp32=(base / seconds) if base else None, load_average=load_average()))
    if base is not None:
        others = ", ".join(f"{name} {base / seconds:.2f}x" for name, seconds in best.items()
                           if name != "transformers fp32")
        print(f"speed vs transformers fp32 (best rounds): {others}")


def where_the_time_goes(name: str, step, flops: int, peaks: MatmulPeak) -> None:
    """One profiled step of a variant (CPU): the share of matmuls (and their own GFLOP/s and
    fraction of peak: the ceiling of the whole step were everything else free), copies (dtype
    casts, concatenations, layout), dropout's random numbers, and the rest."""
    from torch.profiler import ProfilerActivity, profile

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    shares = {"matmul": 0.0, "copies": 0.0, "random numbers": 0.0, "other": 0.0}
    for event in prof.key_averages():
        group = ("matmul" if event.key in MATMUL_OPS else "copies" if event.key in COPY_OPS
                 else "random numbers" if event.key in RANDOM_OPS else "other")
        shares[group] += event.self_cpu_time_total / 1e6
    total = sum(shares.values())
    precision = "bf16" if "bf16" in name else "fp32"
    matmul_rate = flops / shares["matmul"] / 1e9
    print(f"where the time of '{name}' goes (torch.profiler, one step, {total:.3f} s profiled): "
          + ", ".join(f"{group} {seconds / total:.0%}" for group, seconds in shares.items())
          + f"; the matmuls alone run at {matmul_rate:.0f} GFLOP/s = {matmul_rate / peaks[precision]:.0%} of the "
          f"{precision} peak (the step's ceiling if all else were free)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=lambda text: [int(b) for b in text.split(",")], default=[8],
                        help="batch sizes, comma-separated (e.g. 8,32; on a GPU 64,256)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(ours, bf16)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["train", "qa", "transformers"])
    parser.add_argument("--json", help="write every row (and the machine) to this JSON file")
    args = parser.parse_args()
    import transformers

    torch.set_num_threads(args.threads)
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("bench_model: --device cuda, but torch sees no CUDA device")
    _count_cpu_sdpa()
    print(machine_line())
    if device.startswith("cuda"):
        print(device_line(device))
    print(f"# transformers {transformers.__version__}, device {device}")
    peaks = MatmulPeak({"fp32": torch.float32, "bf16": torch.bfloat16}, device)
    print(f"# matmul peak at the start (square GEMM, best of >=1.5 s, {torch.get_num_threads()} threads): "
          f"{peaks.describe()}")
    config = LxmertConfig.preset("base")
    with_transformers = "transformers" not in args.skip

    torch.manual_seed(0)
    ours = LxmertForPreTraining(config).to(device).train()
    theirs = transformers.LxmertForPreTraining(config.to_transformers()).to(device).train()
    theirs.load_state_dict(ours.state_dict())
    qa_config = config.replace(num_qa_labels=3129)
    ours_qa = LxmertForQuestionAnswering(qa_config).to(device).eval()
    ours_qa_cast = copy.deepcopy(ours_qa).cast_linear_weights(torch.bfloat16)
    theirs_qa = transformers.LxmertForQuestionAnswering(qa_config.to_transformers()).to(device).eval()
    theirs_qa.load_state_dict(ours_qa.state_dict())
    compiled = torch.compile(ours) if args.compile else None
    rows: list[dict] = []

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
            if not with_transformers:
                variants = {k: v for k, v in variants.items() if not k.startswith("transformers")}
            flops = {name: count_flops(fn) for name, fn in variants.items()}
            if compiled is not None:
                variants["ours bf16 + compile"] = train_step(compiled, inputs, targets, device, True)
                flops["ours bf16 + compile"] = flops["ours bf16 autocast"]  # same graph; the counter cannot see inside
            report("pretraining step: forward + backward, five tasks", "pretraining step",
                   measure(variants, args.rounds, args.warmup, device), flops, peaks, batch, device, rows)
            if device == "cpu":
                where_the_time_goes("ours bf16 autocast", variants["ours bf16 autocast"],
                                    flops["ours bf16 autocast"], peaks)
        if "qa" not in args.skip:
            variants = {"transformers fp32": qa_step(theirs_qa, inputs, device, False),
                        "transformers bf16 autocast": qa_step(theirs_qa, inputs, device, True),
                        "ours fp32": qa_step(ours_qa, inputs, device, False),
                        "ours bf16 autocast": qa_step(ours_qa, inputs, device, True),
                        "ours bf16, weights cast once": qa_step(ours_qa_cast, inputs, device, True)}
            if not with_transformers:
                variants = {k: v for k, v in variants.items() if not k.startswith("transformers")}
            flops = {name: count_flops(fn) for name, fn in variants.items()}
            report("QA inference (3129 answers)", "qa inference", measure(variants, args.rounds, args.warmup, device),
                   flops, peaks, batch, device, rows)
            if device == "cpu":
                where_the_time_goes("ours bf16, weights cast once", variants["ours bf16, weights cast once"],
                                    flops["ours bf16, weights cast once"], peaks)
    print(f"\n# load average at the end {load_average()}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine_line(), "device": device_line(device),
                                               "peaks_gflop_per_s": {k: peaks[k] for k in ("fp32", "bf16")},
                                               "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

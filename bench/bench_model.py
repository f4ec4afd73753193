"""LXMERT speed: this model against transformers', same process, same weights, same inputs.

Two workloads at the `base` size (9/5/5 layers, 768 wide), 20 tokens, 36 boxes:
  - pretraining step: zero_grad + forward with all five tasks' labels + backward (train mode);
  - QA inference: LxmertForQuestionAnswering (3129 answers) forward, eval mode, no_grad.
Variants: transformers fp32; ours fp32; ours under bf16 autocast (CPU: where the CPU has bf16
matrix units; CUDA: bf16 + SDPA). Rounds are interleaved (one step of each variant per
round) so that load from other processes hits all variants alike; medians are printed.

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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

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


def measure(variants: dict, rounds: int, warmup: int, device: str) -> dict[str, float]:
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
    return {name: statistics.median(values) for name, values in times.items()}


def report(title: str, medians: dict[str, float], batch: int, baseline: str) -> None:
    print(f"\n{title} (batch {batch}; median seconds per step)")
    print(f"{'variant':<28}{'s/step':>10}{'steps/s':>10}{'vs transformers':>18}")
    for name, seconds in medians.items():
        print(f"{name:<28}{seconds:>10.3f}{1 / seconds:>10.2f}{medians[baseline] / seconds:>17.2f}x")


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
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, device {device}, "
          f"threads {torch.get_num_threads()}")
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
                        "ours fp32": train_step(ours, inputs, targets, device, False),
                        "ours bf16 autocast": train_step(ours, inputs, targets, device, True)}
            if compiled is not None:
                variants["ours bf16 + compile"] = train_step(compiled, inputs, targets, device, True)
            report("pretraining step: forward + backward, five tasks",
                   measure(variants, args.rounds, args.warmup, device), batch, "transformers fp32")
        if "qa" not in args.skip:
            variants = {"transformers fp32": qa_step(theirs_qa, inputs, device, False),
                        "ours fp32": qa_step(ours_qa, inputs, device, False),
                        "ours bf16 autocast": qa_step(ours_qa, inputs, device, True)}
            report("QA inference (3129 answers)", measure(variants, args.rounds, args.warmup, device),
                   batch, "transformers fp32")


if __name__ == "__main__":
    main()

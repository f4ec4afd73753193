"""Probe (not a timing): does a pretraining run already verify NLVR2 statements, before fine-tuning?

For every statement of an NLVR2 split, the pretraining run's own matching head scores the
statement against the left and the right image (P(matched)). Per statement template (NLVR2's
`synset` field; the synthetic world writes its template name there) it prints how well each
natural combination of the two scores ranks true statements above false ones: the ROC AUC of
left, right, min (both images), max (either image) and |left - right| (exactly one) against the
label; 0.5 = no signal. NLVR2 fine-tuning reads the same pooled output the matching head reads,
so this is what a fine-tuning can start from.

Measured on the demo's world and store (`demo` pretraining, 3000 steps; NLVR2 train split, 1200
statements; the column that fits each template). The first three columns ran on cut-off
statements: the pretraining's vocabulary, learnt on its corpus alone, spelt NLVR2's words out
in letters and half the statements lost their last words to the 20-piece limit
(research/2026-11-27-nlvr2-truncated-statements.md); the last is the demo since the vocabulary covers them:

                                      cut off                                  whole
    template      combination   reference   words   words + grounding   words + grounding
    both          min              0.46      0.51         0.44                0.83
    exist_right   right            0.50      0.54         0.66                0.64
    one_image     |l - r|          0.52      0.60         0.50                0.60
    relation      max              0.48      0.55         0.60                0.58

With whole statements the matching head already tells "both images contain at least one X"
(0.83), and the fine-tuned model gets 70% of those right (research/2026-11-27-demo-table.md).

    python research/probe_nlvr2_transfer.py --run RUN/pretrain --features STORE --data WORLD [--split train]
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import numpy as np
import torch


from model import LxmertForPreTraining, load_pretrained
from model.errors import CheckpointError
from pipeline.errors import PipelineError
from pipeline.finetune.data import PairBatches
from pipeline.finetune.splits import read_nlvr2_split
from pipeline.inputs.text import load_run_tokenizer
from pipeline.readers.data_root import DataRoot

COMBINATIONS = {"left": lambda l, r: l, "right": lambda l, r: r, "min": np.minimum, "max": np.maximum,
                "|l-r|": lambda l, r: np.abs(l - r)}


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """P(a true statement scores above a false one), ties counting half; NaN without both."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    if not len(pos) or not len(neg):
        return float("nan")
    return float((pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean())


def matching_scores(run: Path, features: str, data: str, split: str, batch: int = 128):
    """(examples, (n, 2) P(matched) with the left / right image)."""
    model = load_pretrained(run, LxmertForPreTraining).eval()
    examples = read_nlvr2_split(data, split)
    pairs = PairBatches(examples, load_run_tokenizer(run), features, labelled=True)
    scores = []
    with torch.no_grad():
        for start in range(0, len(examples), batch):
            inputs = pairs.make_batch(np.arange(start, min(start + batch, len(examples))), None, 0)
            sides = [model(inputs["input_ids"], inputs["visual_feats"][:, side], inputs["visual_pos"][:, side],
                           inputs["attention_mask"]).cross_relationship_score.softmax(-1)[:, 1]
                     for side in (0, 1)]
            scores.append(torch.stack(sides, 1))
    return examples, torch.cat(scores).numpy()


def templates(data: str, split: str) -> dict[str, str]:
    """identifier -> the statement's `synset` (its template in the synthetic world)."""
    path = DataRoot(data).nlvr2(split)
    with open(path, encoding="utf-8") as fh:
        return {row["identifier"]: row.get("synset") or "?" for row in map(json.loads, filter(str.strip, fh))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="pretraining run (its final/) or a checkpoint directory")
    parser.add_argument("--features", required=True, help="feature store holding the split's images")
    parser.add_argument("--data", required=True, help="data root with nlvr2/")
    parser.add_argument("--split", default="train")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    run = Path(args.run)
    run = run / "final" if (run / "final").is_dir() else run
    try:
        examples, scores = matching_scores(run, args.features, args.data, args.split)
        names = templates(args.data, args.split)
    except (PipelineError, CheckpointError, OSError, KeyError) as error:
        print(f"probe_nlvr2_transfer: {error}", file=sys.stderr)
        return 2
    rows = collections.defaultdict(list)
    for example, (left, right) in zip(examples, scores):
        rows[names.get(example.identifier, "?")].append((left, right, example.label))
    print(f"{'template':14} {'n':>5}  " + "  ".join(f"{c:>6}" for c in COMBINATIONS) + "   (ROC AUC; 0.5 = no signal)")
    for template, values in sorted(rows.items()):
        left, right, label = map(np.asarray, zip(*values))
        aucs = [roc_auc(combine(left, right), label) for combine in COMBINATIONS.values()]
        print(f"{template:14} {len(label):>5}  " + "  ".join(f"{a:6.3f}" for a in aucs))
    return 0


if __name__ == "__main__":
    sys.exit(main())

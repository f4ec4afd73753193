"""Learning probe (not a timing): can a model trained from scratch learn to look a word up in the image?

Task: "is there a SHAPE?" over 6 regions whose features are one-hot shape codes (x5) plus noise;
3-6 real objects per image, the rest background regions with noise only; half the questions ask
about a shape that is there. Nothing in the question alone tells the answer when shapes are drawn
uniformly ("uniform"), so the model must relate the word to the regions: the same kind of
problem as cross-modality matching, with none of its ambiguity. With a skewed shape frequency
("skewed") the question alone is a weak hint (common shapes are more often there).

Models, same width (128), heads (4), FFN (512) and dropout (0.1), same optimiser (AdamW, lr 1e-3,
5% warm-up, linear decay, clip 1.0), batch 64:
  - lxmert:  `LxmertForPreTraining` with the `demo` preset (2 language, 1 relation, 2 cross
             layers; the answer head on the pooled [CLS]), the model the demo pretrains;
  - lxmert+words: the same with the pretraining loss "words" added (`sentence_words_weight`
             1.0: the MLM head at [CLS] predicts the sentence's tokens);
  - single:  a single-stream post-LN transformer over [text; regions] (4 layers), [CLS] head.

The same for cross-modality matching ("matching"): a statement "SHAPE and SHAPE ." names two
shapes of the image or, half the time, of another image; the label is whether both are there
(LXMERT reads it with its matching head). The hint for matching is a presence phase on skewed
shapes, then matching on uniform shapes.

Prints held-out accuracy at quarters of the run with the majority-label rate. Measured on the
2-core CPU box, 600 steps, accuracy at step 600 for seeds 0 / 1 (single-stream: seed 0):

  presence  lxmert uniform          0.46 / 0.51   at chance throughout (on the synthetic world's
                                                   ground-truth regions: still at chance after 2400
                                                   steps, and so is transformers' LXMERT at 600)
  presence  lxmert skewed           1.00 / 0.98
  presence  lxmert skewed>uniform   1.00 / 1.00   a third of the steps with the hint, then none
  presence  lxmert+words uniform    1.00 / 1.00   (0.77 / 0.88 at step 300)
  presence  single uniform          1.00          (0.86 already at step 150)
  matching  lxmert uniform          0.613 / 0.607 = the majority label, at every step
  matching  lxmert skewed>uniform   0.93 / 0.98   (majority 0.62 / 0.60)
  matching  lxmert+words uniform    1.00 / 1.00   (0.81 / 0.93 at step 150)
  matching  single uniform          1.00          (0.91 at step 150)

So LXMERT from scratch sits on a symmetric saddle when nothing but the image-word relation
predicts the target, and a weak first-order hint gets it off; the grounding it then learns
carries over to uniform shapes and to matching. What the hint supplies is a reason for [CLS]
to carry the named word (a linear head at the word's own position learns presence without
it); the words loss gives that reason directly, with no hint and no new weights. Use this probe to judge a change meant to make
from-scratch pretraining ground words (initialisation, task curriculum, optimiser) before
spending a pretraining run on it. The pipeline's counterparts are the pretraining options
`sentence_words_weight` (the words loss) and `grounding_warmup_epochs` / `grounding_rate`
(pipeline/pretraining/grounding.py: questions and statements about each image's own
detections, with such a hint); the demo uses both.

    python research/probe_grounding.py [--steps 600] [--seeds 0] [--models lxmert,lxmert+words,single]
        [--tasks presence,matching] [--shapes uniform,skewed,skewed>uniform] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from torch import nn


from model import LxmertConfig, LxmertForPreTraining
from pipeline.training.schedule import warmup_linear_schedule

MODELS, TASKS, SHAPES = ("lxmert", "lxmert+words", "single"), ("presence", "matching"), ("uniform", "skewed", "skewed>uniform")

NUM_SHAPES, NUM_BOXES, VOCAB = 10, 6, 40
SHAPE_TOKEN0 = 20          # token ids 20..29 are the shape words
QUESTION = [2, 5, 6, 7]    # [CLS] "is" "there" "a", then the shape, "?" (8), [SEP] (3)


def make_images(n: int, skewed: bool, g: torch.Generator):
    """(features (n, 6, 10), boxes (n, 6, 4), present (n, 10) bool)."""
    freq = torch.tensor([0.5 ** (i / 3) for i in range(NUM_SHAPES)]) if skewed else torch.ones(NUM_SHAPES)
    feats = torch.rand(n, NUM_BOXES, NUM_SHAPES, generator=g) * 0.5
    present = torch.zeros(n, NUM_SHAPES, dtype=torch.bool)
    counts = torch.randint(3, NUM_BOXES + 1, (n,), generator=g)
    for i in range(n):
        shapes = torch.multinomial(freq, int(counts[i]), replacement=True, generator=g)
        feats[i, torch.arange(len(shapes)), shapes] += 5.0
        present[i, shapes] = True
    xy = torch.rand(n, NUM_BOXES, 2, generator=g) * 0.7
    boxes = torch.cat([xy, xy + 0.1 + torch.rand(n, NUM_BOXES, 2, generator=g) * 0.2], -1)
    return feats, boxes, present


def make_questions(present: torch.Tensor, g: torch.Generator):
    """One question per image: (token ids (n, 7), answer (n,)), yes and no equally often."""
    n = len(present)
    yes = torch.rand(n, generator=g) < 0.5
    shape = torch.empty(n, dtype=torch.long)
    for i in range(n):
        pool = torch.nonzero(present[i] == yes[i]).flatten()
        if len(pool) == 0:
            yes[i] = ~yes[i]
            pool = torch.nonzero(present[i] == yes[i]).flatten()
        shape[i] = pool[torch.randint(len(pool), (1,), generator=g)]
    ids = torch.tensor(QUESTION + [0, 8, 3]).repeat(n, 1)
    ids[:, 4] = SHAPE_TOKEN0 + shape
    return ids, yes.long()


def make_statements(present: torch.Tensor, g: torch.Generator):
    """Cross-modality matching, one statement per image: "SHAPE and SHAPE ." naming two shapes of
    the image or, half the time, of another image; the label is the truth (both named shapes
    there), so a swapped statement that happens to fit counts as matched. (token ids, label)."""
    n = len(present)

    def name_two(rows: torch.Tensor) -> torch.Tensor:
        out = torch.empty(len(rows), 2, dtype=torch.long)
        for i, row in enumerate(rows):
            pool = torch.nonzero(row).flatten()
            out[i] = pool[torch.randint(len(pool), (2,), generator=g)]
        return out

    named = name_two(present)
    swap = torch.rand(n, generator=g) < 0.5
    named[swap] = name_two(present[torch.randint(n, (int(swap.sum()),), generator=g)])
    ids = torch.tensor([2, 0, 9, 0, 8, 3]).repeat(n, 1)
    ids[:, 1], ids[:, 3] = SHAPE_TOKEN0 + named[:, 0], SHAPE_TOKEN0 + named[:, 1]
    rows = torch.arange(n)
    return ids, (present[rows, named[:, 0]] & present[rows, named[:, 1]]).long()


class SingleStream(nn.Module):
    """[CLS] text tokens, then one token per region; post-LN transformer; tanh-pooled [CLS] head."""

    def __init__(self, hidden: int = 128, layers: int = 4):
        super().__init__()
        self.word = nn.Embedding(VOCAB, hidden)
        self.position = nn.Embedding(16, hidden)
        self.region = nn.Linear(NUM_SHAPES, hidden)
        self.box = nn.Linear(4, hidden)
        layer = nn.TransformerEncoderLayer(hidden, 4, 4 * hidden, 0.1, activation="gelu", batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers)
        self.head = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 2))

    def forward(self, ids, feats, boxes, task: str = "presence"):
        # one 2-way head serves both tasks (they never share a step)
        text = self.word(ids) + self.position(torch.arange(ids.shape[1]))
        regions = self.region(feats) + self.box(boxes)
        return self.head(self.encoder(torch.cat([text, regions], 1))[:, 0])


class LxmertProbe(nn.Module):
    """`words`: add the pretraining option `sentence_words_weight` (1.0): the MLM head at [CLS]
    predicts the sentence's words (every token but [CLS], [SEP] and padding)."""

    def __init__(self, words: bool = False):
        super().__init__()
        config = LxmertConfig.preset("demo", vocab_size=VOCAB, visual_feat_dim=NUM_SHAPES, num_qa_labels=2,
                                     num_object_labels=NUM_SHAPES, num_attr_labels=2, task_mask_lm=False,
                                     task_obj_predict=False)
        self.lxmert = LxmertForPreTraining(config)
        self.words = words
        self.extra_loss = torch.zeros(())

    def forward(self, ids, feats, boxes, task: str = "presence"):
        # presence is image QA (the answer head); matching is the pretraining matching head
        words = ids.masked_fill((ids == 0) | (ids == 2) | (ids == 3), -100) if self.words and self.training else None
        out = self.lxmert(ids, feats, boxes, (ids != 0).long(), sentence_words=words)
        if words is not None:
            self.extra_loss = out.loss_per_task["words"]
        return out.question_answering_score if task == "presence" else out.cross_relationship_score


def run(model_name: str, task: str, shapes: str, steps: int, seed: int,
        batch: int = 64) -> tuple[list[tuple[int, float]], float]:
    """`shapes`: "uniform", "skewed", or "skewed>uniform": the first third of the steps are
    presence questions on skewed shapes (the hint), the rest `task` on uniform shapes. Returns the
    held-out accuracy curve of `task` on the last distribution, and its majority-label rate."""
    g = torch.Generator().manual_seed(1000 + seed)
    phases = shapes.split(">")
    pools = {name: make_images(4000, name == "skewed", g) for name in phases}
    test_images = make_images(1000, phases[-1] == "skewed", g)
    examples = {"presence": make_questions, "matching": make_statements}
    test = (*examples[task](test_images[2], g), *test_images[:2])
    majority = max(test[1].float().mean().item(), 1 - test[1].float().mean().item())
    switch = steps // 3 if len(phases) > 1 else 0
    torch.manual_seed(seed)
    model = LxmertProbe(words=model_name == "lxmert+words") if model_name.startswith("lxmert") else SingleStream()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = warmup_linear_schedule(opt, 0.05, steps)
    curve = []
    for step in range(1, steps + 1):
        hint = step <= switch
        train = pools[phases[0] if hint else phases[-1]]
        step_task = "presence" if hint else task
        pick = torch.randint(len(train[0]), (batch,), generator=g)
        ids, answer = examples[step_task](train[2][pick], g)
        loss = nn.functional.cross_entropy(model(ids, train[0][pick], train[1][pick], step_task), answer)
        if isinstance(model, LxmertProbe) and model.words:
            loss = loss + model.extra_loss
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % max(1, steps // 4) == 0 or step == steps:
            model.eval()
            with torch.no_grad():
                ids, answer, feats, boxes = test
                accuracy = (model(ids, feats, boxes, task).argmax(-1) == answer).float().mean().item()
            model.train()
            curve.append((step, accuracy))
    return curve, majority


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--models", default="lxmert,single")
    parser.add_argument("--tasks", default="presence,matching")
    parser.add_argument("--shapes", default="uniform,skewed,skewed>uniform")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    for option, names, known in (("--models", args.models, MODELS), ("--tasks", args.tasks, TASKS),
                                 ("--shapes", args.shapes, SHAPES)):
        unknown = set(names.split(",")) - set(known)
        if unknown:
            parser.error(f"{option}: unknown {', '.join(sorted(unknown))}; choose from {', '.join(known)}")
    torch.set_num_threads(args.threads)
    print(f"{'task':9} {'model':12} {'shapes':15} {'seed':>4}  held-out accuracy by step [majority label]")
    for task in args.tasks.split(","):
        for model_name in args.models.split(","):
            for shapes in args.shapes.split(","):
                if task == "matching" and shapes == "skewed":
                    continue   # skewed shapes are the hint of the presence task only
                for seed in map(int, args.seeds.split(",")):
                    start = time.perf_counter()
                    curve, majority = run(model_name, task, shapes, args.steps, seed)
                    points = "  ".join(f"{s}:{a:.3f}" for s, a in curve)
                    print(f"{task:9} {model_name:12} {shapes:15} {seed:>4}  {points}  [{majority:.3f}]  "
                          f"({time.perf_counter() - start:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A world of the paper's sizes with content that does not matter: the scale benchmark's input.

    python bench/scale_world.py OUT --fraction 0.25 [--parts store,corpus,tasks] [--seed 0]

Writes, deterministically for (fraction, seed), at `fraction` of the real sizes:

    OUT/features/        a feature store of round(180,000 x fraction) images x 36 x 2048 float16,
                         through the project's shard writer and `finalize_store` (manifest and
                         checksums, as `extract` leaves it)
    OUT/data/lxmert/     LXMERT's pretraining json (mscoco_train, mscoco_nominival, vgnococo,
                         mscoco_minival) with the corpus's 9.18M sentences x fraction
    OUT/data/vocab.txt   a WordPiece vocabulary that covers every word written
    OUT/data/vqa/, gqa/, nlvr2/   VQA v2 train2014 + val2014, GQA train balanced + testdev
                         balanced/all + choices, NLVR2 train/dev/test1, at their real counts
                         x fraction
    OUT/predictions/     a prediction file per evaluated split (VQA val2014, GQA testdev, NLVR2 dev)

Full size (`--fraction 1`) needs about 27 GB of disk for the store and 1.5 GB for the json:
every part is written as a stream (one shard, one json entry at a time), so memory stays
at a shard's worth whatever the fraction.

The sizes are the paper's and the datasets' own counts (`REAL`). Where the paper gives only
a total (the corpus's 9.18M sentences), the split over sources is an assumption stated in
`CORPUS_SENTENCES`. Values are drawn for speed, not meaning: feature rows come from a fixed
pool of post-ReLU-like float16 rows (non-negative, about 40 % zeros, a long right tail, as the
bottom-up-attention features are), sentences and labels from fixed pools of pseudo-words.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.atomic import atomic_path  # noqa: E402
from pipeline.features.manifest import finalize_store  # noqa: E402
from pipeline.features.schema import ImageFeatures, StoreMetadata  # noqa: E402
from pipeline.features.shard import shard_name, write_shard  # noqa: E402

# The real sizes (full scale = fraction 1).
REAL = {
    "coco_train2014_images": 82_783,
    "coco_val2014_images": 40_504,
    "store_images": 180_000,             # COCO 123,287 + Visual Genome images not in COCO (issue 25)
    "minival_images": 5_000,             # LXMERT's mscoco_minival
    "vgnococo_images": 51_579,           # 174,866 pretraining entries (lxmert#36) - 123,287 COCO
    "coco_in_vg_images": 51_208,         # COCO images that Visual Genome also holds
    "vqa_train2014_questions": 443_757,
    "vqa_val2014_questions": 214_354,
    "gqa_train_balanced_questions": 943_000,
    "gqa_testdev_all_questions": 172_174,
    "gqa_testdev_balanced_questions": 12_578,
    "gqa_testdev_images": 398,
    "nlvr2_train": 86_373,
    "nlvr2_dev": 6_982,
    "nlvr2_test1": 6_967,
    "answers": 9_500,                    # LXMERT's pretraining answer table
}
# The corpus: 9.18M sentences (the paper). Per-source split: captions and VQA from the
# datasets' counts; VG phrases from the paper's table; the rest of the 9.18M is GQA + VG-QA
# (named `visual7w` in LXMERT's json), split in the paper's proportion. An assumption: the
# paper's per-source rows do not add up to its total.
CORPUS_SENTENCES = {"mscoco": 616_767, "vqa": 658_111, "vg": 5_060_000, "gqa": 1_072_000, "visual7w": 1_773_122}
FEATURE_DIM, NUM_BOXES, NUM_OBJECTS, NUM_ATTRIBUTES = 2048, 36, 1600, 400
SHARD_SIZE = 1000          # extract's default
PARTS = ("store", "corpus", "tasks")


def scaled(name: str, fraction: float, minimum: int = 1) -> int:
    return max(minimum, int(round(REAL[name] * fraction)))


# -- images ---------------------------------------------------------------------------------------

def image_ids(fraction: float) -> list[str]:
    """The store's ids: COCO train2014, then val2014, then Visual Genome (numeric) images."""
    n_total = scaled("store_images", fraction)
    n_train = scaled("coco_train2014_images", fraction)
    n_val = scaled("coco_val2014_images", fraction)
    ids = [f"COCO_train2014_{i:012d}" for i in range(1, n_train + 1)]
    ids += [f"COCO_val2014_{i:012d}" for i in range(1, n_val + 1)]
    ids += [str(2_300_000 + i) for i in range(max(0, n_total - len(ids)))]
    return ids


def store_metadata() -> StoreMetadata:
    return StoreMetadata(detector="scale-simulation", detector_config={"preset": "scale-simulation"},
                         weights_sha256="simulated", box_rule={"selection": "caffe", "min_boxes": 36, "max_boxes": 36},
                         feature_dim=FEATURE_DIM, num_objects=NUM_OBJECTS, num_attributes=NUM_ATTRIBUTES,
                         feature_dtype="float16")


def feature_pool(seed: int, rows: int = 2048) -> np.ndarray:
    """Post-ReLU-like rows: ~40 % exact zeros, the rest exponential (mean 0.8), capped at 30."""
    rng = np.random.default_rng(seed)
    values = rng.exponential(0.8, size=(rows, FEATURE_DIM)).astype(np.float32)
    values[rng.random((rows, FEATURE_DIM)) < 0.4] = 0.0
    return np.minimum(values, 30.0).astype(np.float16)


def shard_images(ids: list[str], pool: np.ndarray, rng: np.random.Generator) -> list[ImageFeatures]:
    """One shard's images: 36 consecutive pool rows from a random start each (views, not copies)."""
    n = len(ids)
    starts = rng.integers(0, len(pool) - NUM_BOXES, n)
    widths = rng.integers(320, 641, n)
    heights = rng.integers(240, 481, n)
    xy = rng.random((n, NUM_BOXES, 2)) * 0.7
    wh = 0.05 + rng.random((n, NUM_BOXES, 2)) * 0.25
    scale = np.stack([widths, heights], 1)[:, None, :].astype(np.float32)
    boxes = np.concatenate([xy * scale, np.minimum(xy + wh, 1.0) * scale], 2).astype(np.float32)
    objects = rng.integers(0, NUM_OBJECTS, (n, NUM_BOXES)).astype(np.int32)
    attrs = rng.integers(0, NUM_ATTRIBUTES, (n, NUM_BOXES)).astype(np.int32)
    conf = rng.random((n, NUM_BOXES, 2)).astype(np.float32) * 0.8 + 0.2
    return [ImageFeatures(image_id=ids[i], width=int(widths[i]), height=int(heights[i]), boxes=boxes[i],
                          features=pool[starts[i]: starts[i] + NUM_BOXES], objects_id=objects[i],
                          objects_conf=conf[i, :, 0], attrs_id=attrs[i], attrs_conf=conf[i, :, 1])
            for i in range(n)]


def write_store(out: Path, fraction: float, seed: int = 0, shard_size: int = SHARD_SIZE) -> dict:
    """The feature store, one shard in memory at a time; complete shards are kept on a re-run.
    Shard k holds the k-th `shard_size` ids in sorted order, as `extract` cuts a folder."""
    out.mkdir(parents=True, exist_ok=True)
    ids, meta, pool = sorted(image_ids(fraction)), store_metadata(), feature_pool(seed)
    infos = []
    for k, a in enumerate(range(0, len(ids), shard_size)):
        path = out / shard_name(k)
        rng = np.random.default_rng([seed, k])
        if path.is_file():      # resumable: a shard's content follows from (seed, k) alone
            continue
        infos.append(write_shard(path, shard_images(ids[a:a + shard_size], pool, rng), meta))
    manifest = finalize_store(out, meta, infos)
    return {"images": manifest["num_images"], "shards": len(manifest["shards"]),
            "bytes": sum(s["num_bytes"] for s in manifest["shards"])}


# -- text -----------------------------------------------------------------------------------------

_ONSETS = ["b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z",
           "br", "ch", "cl", "dr", "fl", "gr", "pl", "sh", "st", "th", "tr"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "oo", "ou"]
_CODAS = ["", "n", "r", "s", "t", "ng", "ck", "ll", "st"]


def words(count: int, seed: int) -> list[str]:
    """`count` distinct pronounceable pseudo-words of one to three syllables."""
    rng = np.random.default_rng(seed)
    out: dict[str, None] = {}
    while len(out) < count:
        n = int(rng.integers(1, 4))
        w = "".join(_ONSETS[rng.integers(len(_ONSETS))] + _VOWELS[rng.integers(len(_VOWELS))] for _ in range(n))
        out.setdefault(w + _CODAS[rng.integers(len(_CODAS))], None)
    return list(out)


class Text:
    """Pools of sentences by kind (Zipf word frequencies, real-looking lengths) and QA labels.

    Sentences are drawn from pools of a few ten thousand per kind, so a 9.18M-sentence corpus
    is written at json speed; what tokenising and the example table cost depends on the
    number and length of sentences, not on their being distinct.
    """

    # (mean words, spread, min, max, question?)
    KINDS = {"caption": (10.5, 2.5, 6, 24, False), "phrase": (5.0, 2.0, 1, 14, False),
             "question": (6.5, 2.0, 3, 18, True)}

    def __init__(self, seed: int = 0, vocabulary: int = 8000, pool: int = 1 << 15):
        rng = np.random.default_rng([seed, 1])
        self.vocabulary = words(vocabulary, seed)
        self.answers = words(REAL["answers"], seed + 1000)
        weights = 1.0 / np.arange(1, vocabulary + 1)
        weights /= weights.sum()
        self.pools: dict[str, list[str]] = {}
        for kind, (mean, spread, lo, hi, question) in self.KINDS.items():
            lengths = np.clip(np.rint(rng.normal(mean, spread, pool)), lo, hi).astype(int)
            flat = rng.choice(vocabulary, size=int(lengths.sum()), p=weights)
            ends = np.cumsum(lengths)
            vocab = self.vocabulary
            self.pools[kind] = [" ".join(vocab[j] for j in flat[e - k: e]) + ("?" if question else "")
                                for e, k in zip(ends, lengths)]
        aw = 1.0 / np.arange(1, len(self.answers) + 1) ** 1.1
        self.answer_weights = aw / aw.sum()

    def sentences(self, kind: str, rng: np.random.Generator, n: int) -> list[str]:
        pool = self.pools[kind]
        return [pool[i] for i in rng.integers(0, len(pool), n)]

    def answer_indices(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.choice(len(self.answers), size=n, p=self.answer_weights)

    def vqa_labels(self, rng: np.random.Generator, n: int) -> list[dict[str, float]]:
        """VQA soft scores: the top answer at 1.0 (or 0.9), sometimes a second and third lower."""
        first, second, third = (self.answer_indices(rng, n) for _ in range(3))
        extra = rng.random(n)
        out = []
        for i in range(n):
            label = {self.answers[first[i]]: 1.0 if extra[i] < 0.7 else 0.9}
            if extra[i] >= 0.5:
                label.setdefault(self.answers[second[i]], 0.6 if extra[i] < 0.8 else 0.3)
            if extra[i] >= 0.85:
                label.setdefault(self.answers[third[i]], 0.3)
            out.append(label)
        return out

    def write_vocab(self, path: Path) -> None:
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "?", "."]
        pieces = list(dict.fromkeys(specials + self.vocabulary + [w for a in self.answers for w in a.split()]))
        letters = sorted({c for w in pieces for c in w if c.isalpha()})
        pieces += [c for c in letters if c not in pieces] + [f"##{c}" for c in letters]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(pieces) + "\n")


def _split_counts(total: int, images: int, rng: np.random.Generator) -> np.ndarray:
    """`total` sentences over `images` images, a multinomial draw (exact total, realistic spread)."""
    if images == 0:
        return np.zeros(0, np.int64)
    return rng.multinomial(total, np.full(images, 1.0 / images))


def corpus_plan(fraction: float, seed: int = 0) -> dict[str, list[tuple[str, dict[str, int]]]]:
    """Per pretraining file, per image: how many sentences of each source (no text yet)."""
    rng = np.random.default_rng([seed, 2])
    ids = image_ids(fraction)
    n_train, n_val = scaled("coco_train2014_images", fraction), scaled("coco_val2014_images", fraction)
    coco = ids[:n_train + n_val]
    vg_only = ids[n_train + n_val:][:scaled("vgnococo_images", fraction)]
    in_vg = coco[:scaled("coco_in_vg_images", fraction)]
    vg_images = in_vg + vg_only
    counts: dict[str, dict[str, int]] = {i: {} for i in coco + vg_only}
    for source, images in (("mscoco", coco), ("vqa", coco), ("vg", vg_images), ("gqa", vg_images),
                           ("visual7w", vg_images)):
        for image, k in zip(images, _split_counts(int(round(CORPUS_SENTENCES[source] * fraction)), len(images), rng)):
            if k:
                counts[image][source] = int(k)
    minival = scaled("minival_images", fraction)
    val = ids[n_train:n_train + n_val]
    files = {"mscoco_train": ids[:n_train], "mscoco_minival": val[:minival], "mscoco_nominival": val[minival:],
             "vgnococo": vg_only}
    return {name: [(i, counts[i]) for i in images if counts[i]] for name, images in files.items()}


_KIND = {"mscoco": "caption", "vg": "phrase", "vqa": "question", "gqa": "question", "visual7w": "question"}


def write_corpus(data: Path, fraction: float, text: Text, seed: int = 0) -> dict:
    """LXMERT's pretraining json files, one entry at a time (each file a json list)."""
    plan = corpus_plan(fraction, seed)
    totals: dict[str, int] = {}
    (data / "lxmert").mkdir(parents=True, exist_ok=True)
    for f, (name, entries) in enumerate(plan.items()):
        rng = np.random.default_rng([seed, 3, f])
        with atomic_path(data / "lxmert" / f"{name}.json") as tmp, open(tmp, "w", encoding="utf-8") as fh:
            fh.write("[")
            for k, (image, by_source) in enumerate(entries):
                sentf, labelf = {}, {}
                for source, n in by_source.items():
                    sentf[source] = text.sentences(_KIND[source], rng, n)
                    if source == "vqa":
                        labelf[source] = text.vqa_labels(rng, n)
                    elif source in ("gqa", "visual7w"):
                        labelf[source] = [{text.answers[a]: 1.0} for a in text.answer_indices(rng, n)]
                    totals[source] = totals.get(source, 0) + n
                fh.write(("," if k else "") + json.dumps({"img_id": image, "sentf": sentf, "labelf": labelf}))
            fh.write("]")
    return {"images": sum(len(e) for e in plan.values()), "sentences": sum(totals.values()), "by_source": totals}


# -- the tasks' files -----------------------------------------------------------------------------

def _dump(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh)


def _vqa(data: Path, split: str, n_questions: int, n_images: int, text: Text, rng: np.random.Generator) -> list[int]:
    images = np.sort(rng.integers(1, n_images + 1, n_questions))
    qids = (images * 1000 + np.arange(n_questions) % 1000).tolist()
    qids = list(dict.fromkeys(qids))
    while len(qids) < n_questions:   # collisions at tiny fractions
        qids.append(qids[-1] + 1)
    sents = text.sentences("question", rng, n_questions)
    answers = text.answer_indices(rng, (n_questions, 10))
    agree = rng.random(n_questions) < 0.6
    answers[agree] = answers[agree, :1]     # most questions: the ten annotators agree
    kinds = rng.integers(0, 3, n_questions)
    types = ("yes/no", "number", "other")
    _dump(data / "vqa" / f"v2_OpenEnded_mscoco_{split}_questions.json", {
        "data_subtype": split, "task_type": "Open-Ended", "data_type": "mscoco",
        "questions": [{"image_id": int(images[i]), "question": sents[i], "question_id": qids[i]}
                      for i in range(n_questions)]})
    _dump(data / "vqa" / f"v2_mscoco_{split}_annotations.json", {"data_subtype": split, "annotations": [
        {"question_id": qids[i], "image_id": int(images[i]), "question_type": "what is",
         "answer_type": types[kinds[i]], "multiple_choice_answer": text.answers[answers[i, 0]],
         "answers": [{"answer": text.answers[a], "answer_confidence": "yes", "answer_id": j + 1}
                     for j, a in enumerate(answers[i])]} for i in range(n_questions)]})
    return qids


def _gqa_questions(n: int, n_balanced: int, n_images: int, text: Text, rng: np.random.Generator,
                   prefix: int, entailed: bool) -> dict[str, dict]:
    qids = [f"{prefix}{i:07d}" for i in range(n)]
    images = np.sort(rng.integers(0, n_images, n))
    sents = text.sentences("question", rng, n)
    answers = text.answer_indices(rng, n)
    balanced = np.zeros(n, bool)
    balanced[rng.choice(n, size=min(n, n_balanced), replace=False)] = True
    structural = ("query", "verify", "logical", "choose", "compare")
    semantic = ("obj", "attr", "rel", "cat", "global")
    kinds = rng.integers(0, 5, (n, 2))
    steps = rng.integers(1, 6, n)
    out = {}
    for i in range(n):
        entry = {"imageId": str(2_300_000 + int(images[i])), "question": sents[i],
                 "answer": text.answers[answers[i]], "fullAnswer": sents[i][:-1] + ".",
                 "isBalanced": bool(balanced[i]),
                 "types": {"structural": structural[kinds[i, 0]], "semantic": semantic[kinds[i, 1]],
                           "detailed": "simulated"},
                 "groups": {"global": None if kinds[i, 0] == 0 else f"g{kinds[i, 1]}", "local": f"l{i % 997}"},
                 "semantic": [{"operation": "select", "argument": "x", "dependencies": []}] * int(steps[i]),
                 "semanticStr": "select: x"}
        if entailed:   # questions about the same image entail each other, as in GQA
            entry["entailed"] = [qids[j] for j in range(max(0, i - 2), min(n, i + 3))
                                 if j != i and images[j] == images[i]]
            entry["equivalent"] = [qids[i]]
        out[qids[i]] = entry
    return out


def _nlvr2(data: Path, split: str, n: int, text: Text, rng: np.random.Generator) -> list[str]:
    sents = text.sentences("caption", rng, n)
    labels = rng.random(n) < 0.5
    identifiers = [f"{split}-{i // 8}-{(i // 4) % 2}-{i % 4}" for i in range(n)]
    path = data / "nlvr2" / f"{split}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for i in range(n):
            fh.write(json.dumps({"identifier": identifiers[i], "sentence": sents[i],
                                 "label": "True" if labels[i] else "False", "directory": str(i % 100)}) + "\n")
    return identifiers


def write_tasks(root: Path, fraction: float, text: Text, seed: int = 0) -> dict:
    """The benchmark splits at their real counts x fraction, and a prediction file for each
    evaluated split (the gold answer for about 60 %, another answer otherwise)."""
    data, preds = root / "data", root / "predictions"
    preds.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 4])
    counts = {}
    n_train_img, n_val_img = scaled("coco_train2014_images", fraction), scaled("coco_val2014_images", fraction)
    _vqa(data, "train2014", scaled("vqa_train2014_questions", fraction), n_train_img, text, rng)
    n = scaled("vqa_val2014_questions", fraction)
    qids = _vqa(data, "val2014", n, n_val_img, text, rng)
    right = rng.random(n) < 0.6
    gold = json.loads((data / "vqa" / "v2_mscoco_val2014_annotations.json").read_text())["annotations"]
    _dump(preds / "vqa_val2014.json", [{"question_id": q, "answer": a["multiple_choice_answer"] if ok else "no"}
                                       for q, a, ok in zip(qids, gold, right)])
    counts["vqa"] = {"train2014": scaled("vqa_train2014_questions", fraction), "val2014": n}

    n_gqa_images = scaled("vgnococo_images", fraction)
    train = _gqa_questions(scaled("gqa_train_balanced_questions", fraction), 1 << 62, n_gqa_images, text, rng,
                           prefix=1, entailed=False)
    _dump(data / "gqa" / "train_balanced_questions.json", train)
    del train
    n_all, n_bal = scaled("gqa_testdev_all_questions", fraction), scaled("gqa_testdev_balanced_questions", fraction)
    testdev = _gqa_questions(n_all, n_bal, scaled("gqa_testdev_images", fraction), text, rng, prefix=2, entailed=True)
    _dump(data / "gqa" / "testdev_all_questions.json", testdev)
    _dump(data / "gqa" / "testdev_balanced_questions.json", {q: v for q, v in testdev.items() if v["isBalanced"]})
    _dump(data / "gqa" / "testdev_choices.json",
          {q: {"valid": [v["answer"], "yes", "no"], "plausible": [v["answer"]]} for q, v in testdev.items()})
    right = rng.random(len(testdev)) < 0.6
    _dump(preds / "gqa_testdev.json", [{"questionId": q, "prediction": v["answer"] if ok else "no"}
                                       for (q, v), ok in zip(testdev.items(), right)])
    counts["gqa"] = {"train_balanced": scaled("gqa_train_balanced_questions", fraction), "testdev_all": n_all,
                     "testdev_balanced": n_bal}

    for split in ("train", "dev", "test1"):
        identifiers = _nlvr2(data, split, scaled(f"nlvr2_{split}", fraction), text, rng)
        if split == "dev":
            labels = [json.loads(line)["label"] for line in (data / "nlvr2" / "dev.json").open()]
            right = rng.random(len(identifiers)) < 0.6
            (preds / "nlvr2_dev.csv").write_text("".join(
                f"{i},{lab if ok else ('False' if lab == 'True' else 'True')}\n"
                for i, lab, ok in zip(identifiers, labels, right)))
    counts["nlvr2"] = {s: scaled(f"nlvr2_{s}", fraction) for s in ("train", "dev", "test1")}
    return counts


def write_world(out: str | os.PathLike, fraction: float, parts=PARTS, seed: int = 0) -> dict:
    """Every chosen part under `out`; returns what was written and how long each part took."""
    out = Path(out)
    report: dict = {"fraction": fraction, "seed": seed}
    # pools of 32K sentences per kind from 1/64 up; smaller worlds need fewer (and start faster)
    pool = int(min(1 << 15, max(1 << 10, (1 << 21) * fraction)))
    text = Text(seed, pool=pool) if {"corpus", "tasks"} & set(parts) else None
    if text is not None:
        text.write_vocab(out / "data" / "vocab.txt")
    writers = {"store": lambda: write_store(out / "features", fraction, seed),
               "corpus": lambda: write_corpus(out / "data", fraction, text, seed),
               "tasks": lambda: write_tasks(out, fraction, text, seed)}
    for part in parts:
        t0 = time.perf_counter()
        report[part] = writers[part]()
        report[part]["seconds"] = round(time.perf_counter() - t0, 2)
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out")
    p.add_argument("--fraction", type=float, default=1 / 64, help="of the real sizes (1 = full size)")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    parts = [s for s in args.parts.split(",") if s]
    unknown = set(parts) - set(PARTS)
    if unknown or not 0 < args.fraction <= 1:
        p.error(f"unknown parts {sorted(unknown)}" if unknown else "--fraction must be in (0, 1]")
    print(json.dumps(write_world(args.out, args.fraction, parts, args.seed), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

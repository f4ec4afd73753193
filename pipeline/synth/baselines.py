"""Question-only baselines: how far a guesser that never looks at the image gets.

For each dataset the guesser learns, on the training split, the majority answer of every
exact question string (falling back to the majority answer of its question type, then to
the overall majority) and answers the evaluation split with it. These are the strongest
cheap text-only baselines; on the synthetic world they must stay far below what a model
that sees the objects reaches. They work on any data root, real ones included.
"""

from __future__ import annotations

import collections
from typing import Callable, Hashable, Iterable, Sequence, TypeVar

from pipeline.readers.data_root import DataRoot
from pipeline.readers.image_ids import nlvr2_group

T = TypeVar("T")


class MajorityGuesser:
    """Majority answer by the first key of a back-off chain that was seen in training."""

    def __init__(self, keys: Sequence[Callable[[T], Hashable]]):
        self.keys = keys
        self.tables: list[dict[Hashable, collections.Counter]] = [collections.defaultdict(collections.Counter)
                                                                  for _ in keys]
        self.overall = collections.Counter()

    def fit(self, items: Iterable[T], answer: Callable[[T], str]) -> "MajorityGuesser":
        for it in items:
            a = answer(it)
            self.overall[a] += 1
            for key, table in zip(self.keys, self.tables):
                table[key(it)][a] += 1
        return self

    def guess(self, item: T) -> str:
        for key, table in zip(self.keys, self.tables):
            counter = table.get(key(item))
            if counter:
                return _majority(counter)
        return _majority(self.overall)


def _majority(counter: collections.Counter) -> str:
    top = max(counter.values())
    return min(a for a, n in counter.items() if n == top)   # ties: alphabetical, so it is deterministic


def vqa_baseline(root: DataRoot, train: str = "train2014", evaluate: str = "val2014") -> dict:
    from pipeline.readers.answers import normalize_vqa_answer
    from pipeline.readers.vqa import read_vqa

    tr = read_vqa(root.vqa_questions(train), root.vqa_annotations(train))
    ev = read_vqa(root.vqa_questions(evaluate), root.vqa_annotations(evaluate))
    by_question = MajorityGuesser([lambda q: q.question.lower(), lambda q: q.question_type]).fit(
        tr, lambda q: normalize_vqa_answer(q.multiple_choice_answer))
    by_type = MajorityGuesser([lambda q: q.question_type]).fit(tr, lambda q: normalize_vqa_answer(q.multiple_choice_answer))
    score = lambda guesser: 100.0 * sum(q.scores.get(guesser.guess(q), 0.0) for q in ev) / max(1, len(ev))
    return {"split": evaluate, "questions": len(ev), "question_only": round(score(by_question), 2),
            "question_type_majority": round(score(by_type), 2),
            "ceiling": round(100.0 * sum(max(q.scores.values(), default=0) for q in ev) / max(1, len(ev)), 2)}


def gqa_baseline(root: DataRoot, train: str = "train", evaluate: str = "testdev") -> dict:
    from pipeline.readers.gqa import read_gqa_questions

    tr = read_gqa_questions(root.gqa_questions(train))
    ev = read_gqa_questions(root.gqa_questions(evaluate))
    guesser = MajorityGuesser([lambda q: q.question.lower(), lambda q: q.types.get("detailed")]).fit(tr, lambda q: q.answer)
    by_type = MajorityGuesser([lambda q: q.types.get("detailed")]).fit(tr, lambda q: q.answer)
    acc = lambda g: 100.0 * sum(g.guess(q) == q.answer for q in ev) / max(1, len(ev))
    return {"split": evaluate, "questions": len(ev), "question_only": round(acc(guesser), 2),
            "question_type_majority": round(acc(by_type), 2)}


def nlvr2_baseline(root: DataRoot, train: str = "train", evaluate: str = "dev") -> dict:
    from pipeline.readers.nlvr2 import read_nlvr2

    tr = read_nlvr2(root.nlvr2(train))
    ev = read_nlvr2(root.nlvr2(evaluate))
    guesser = MajorityGuesser([lambda e: e.sentence.lower()]).fit(tr, lambda e: str(e.label))
    correct = {e.identifier: guesser.guess(e) == str(e.label) for e in ev}
    groups = collections.defaultdict(list)
    for e in ev:
        groups[nlvr2_group(e.identifier)].append(correct[e.identifier])
    return {"split": evaluate, "examples": len(ev),
            "question_only": round(100.0 * sum(correct.values()) / max(1, len(ev)), 2),
            "consistency": round(100.0 * sum(all(g) for g in groups.values()) / max(1, len(groups)), 2)}


def question_only_baselines(root: DataRoot) -> dict:
    return {"vqa": vqa_baseline(root), "gqa": gqa_baseline(root), "nlvr2": nlvr2_baseline(root)}

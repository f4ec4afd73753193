"""Answer strings: LXMERT's `convert_ans`, the VQA normalisation, soft scores, vocabularies.

Two normalisations exist and are used where LXMERT uses them:
- `convert_ans` (LXMERT `AnswerTable`): lowercase, strip a trailing ".", strip a leading
  "a "/"an "/"the ", then map number words and a few synonyms. Used for the pretraining
  answer table.
- `normalize_vqa_answer` (bottom-up-attention-vqa `preprocess_answer`, the official VQA
  `processPunctuation` + `processDigitArticle`, then commas removed). Used to build the VQA
  vocabulary (answers of at least 9 questions over train+val) and to key soft scores.
"""

from __future__ import annotations

import collections
import functools
import json
import os
import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from pipeline.atomic import write_json
from pipeline.errors import PipelineError

_ANS_CONVERT = {
    "a man": "man", "the man": "man", "a woman": "woman", "the woman": "woman",
    "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10", "grey": "gray",
}


def convert_ans(ans: str) -> str:
    """LXMERT's `AnswerTable.convert_ans` (docs/reference/lxmert.md §1.5)."""
    if len(ans) == 0:
        return ""
    ans = ans.lower()
    if ans[-1] == ".":
        ans = ans[:-1].strip()
    if ans.startswith("a "):
        ans = ans[2:].strip()
    if ans.startswith("an "):
        ans = ans[3:].strip()
    if ans.startswith("the "):
        ans = ans[4:].strip()
    return _ANS_CONVERT.get(ans, ans)


# --- the official VQA normalisation (docs/reference/evaluation.md §2.2-2.4), quirks included ---
_MANUAL_MAP = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
               "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = ("a", "an", "the")
_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_CONTRACTIONS_TEXT = (
    "aint:ain't arent:aren't cant:can't couldve:could've couldnt:couldn't couldn'tve:couldn't've "
    "couldnt've:couldn't've didnt:didn't doesnt:doesn't dont:don't hadnt:hadn't hadnt've:hadn't've "
    "hadn'tve:hadn't've hasnt:hasn't havent:haven't hed:he'd hed've:he'd've he'dve:he'd've hes:he's "
    "howd:how'd howll:how'll hows:how's Id've:I'd've I'dve:I'd've Im:I'm Ive:I've isnt:isn't itd:it'd "
    "itd've:it'd've it'dve:it'd've itll:it'll let's:let's maam:ma'am mightnt:mightn't "
    "mightnt've:mightn't've mightn'tve:mightn't've mightve:might've mustnt:mustn't mustve:must've "
    "neednt:needn't notve:not've oclock:o'clock oughtnt:oughtn't ow's'at:'ow's'at 'ows'at:'ow's'at "
    "'ow'sat:'ow's'at shant:shan't shed've:she'd've she'dve:she'd've she's:she's shouldve:should've "
    "shouldnt:shouldn't shouldnt've:shouldn't've shouldn'tve:shouldn't've somebody'd:somebodyd "
    "somebodyd've:somebody'd've somebody'dve:somebody'd've somebodyll:somebody'll somebodys:somebody's "
    "someoned:someone'd someoned've:someone'd've someone'dve:someone'd've someonell:someone'll "
    "someones:someone's somethingd:something'd somethingd've:something'd've "
    "something'dve:something'd've somethingll:something'll thats:that's thered:there'd "
    "thered've:there'd've there'dve:there'd've therere:there're theres:there's theyd:they'd "
    "theyd've:they'd've they'dve:they'd've theyll:they'll theyre:they're theyve:they've twas:'twas "
    "wasnt:wasn't wed've:we'd've we'dve:we'd've weve:we've werent:weren't whatll:what'll whatre:what're "
    "whats:what's whatve:what've whens:when's whered:where'd wheres:where's whereve:where've whod:who'd "
    "whod've:who'd've who'dve:who'd've wholl:who'll whos:who's whove:who've whyll:why'll whyre:why're "
    "whys:why's wont:won't wouldve:would've wouldnt:wouldn't wouldnt've:wouldn't've "
    "wouldn'tve:wouldn't've yall:y'all yall'll:y'all'll y'allll:y'all'll yall'd've:y'all'd've "
    "y'alld've:y'all'd've y'all'dve:y'all'd've youd:you'd youd've:you'd've you'dve:you'd've "
    "youll:you'll youre:you're youve:you've")
_CONTRACTIONS = dict(item.split(":", 1) for item in _CONTRACTIONS_TEXT.split())


def _process_punctuation(text: str) -> str:
    out = text
    # the official loop searches this per punctuation mark; the text does not change in between
    comma_strip = _COMMA_STRIP.search(text) is not None
    for p in _PUNCT:
        if (p + " " in text) or (" " + p in text) or comma_strip:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    # the official call passes re.UNICODE as the count: at most 32 periods go
    return _PERIOD_STRIP.sub("", out, 32)


def _process_digit_article(text: str) -> str:
    words = [_MANUAL_MAP.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words)


@functools.lru_cache(maxsize=1 << 18)
def normalize_vqa_answer(ans: str) -> str:
    """bottom-up-attention-vqa `preprocess_answer`: the official normalisation, commas removed.

    Cached: VQA's 10 answers per question repeat a few hundred thousand distinct strings
    (2.1M answers in train2014), and the official rules cost ~0.1 ms per call."""
    return _process_digit_article(_process_punctuation(ans)).replace(",", "")


def vqa_score(count: int) -> float:
    """Soft score of an answer given by `count` of the 10 annotators (0/0.3/0.6/0.9/1)."""
    return (0.0, 0.3, 0.6, 0.9)[count] if count < 4 else 1.0


def soft_scores(answers: Iterable[str], normalize: bool = True) -> dict[str, float]:
    """answer -> soft score; with `normalize`, variants ("Two", "2.") count for one answer."""
    keys = [normalize_vqa_answer(a) if normalize else a for a in answers]
    counts = collections.Counter(k for k in keys if k)
    return {a: vqa_score(n) for a, n in counts.items()}


@dataclass
class AnswerVocab:
    """An ordered answer list: label k is `answers[k]`; saved as a JSON list with the run."""
    answers: list[str]

    def __post_init__(self) -> None:
        self.ans2label = {a: i for i, a in enumerate(self.answers)}
        if len(self.ans2label) != len(self.answers):
            dup = [a for a, n in collections.Counter(self.answers).items() if n > 1][:3]
            raise ValueError(f"duplicate answers in vocabulary: {dup}")

    def __len__(self) -> int:
        return len(self.answers)

    def __contains__(self, answer: str) -> bool:
        return answer in self.ans2label

    def label(self, answer: str) -> int | None:
        return self.ans2label.get(answer)

    def target(self, scores: Mapping[str, float]) -> dict[int, float]:
        """label -> score for the answers of `scores` in the vocabulary (the rest is dropped)."""
        return {self.ans2label[a]: s for a, s in scores.items() if a in self.ans2label}

    # --- the LXMERT rules ---
    @classmethod
    def for_vqa(cls, questions: Iterable, min_count: int = 9) -> "AnswerVocab":
        """Normalised `multiple_choice_answer`s of at least `min_count` questions (train+val)."""
        counts = collections.Counter()
        for q in questions:
            mc = q.multiple_choice_answer
            if mc is None:
                continue
            counts[normalize_vqa_answer(mc)] += 1
        keep = [a for a, n in counts.items() if n >= min_count and a]
        return cls(sorted(keep, key=lambda a: (-counts[a], a)))

    @classmethod
    def for_gqa(cls, train_questions: Iterable) -> "AnswerVocab":
        """Every answer of the training questions (LXMERT: 1842 for the real GQA)."""
        counts = collections.Counter(q.answer for q in train_questions if q.answer is not None)
        return cls(sorted(counts, key=lambda a: (-counts[a], a)))

    @classmethod
    def for_pretraining(cls, entries: Iterable, sources: Sequence[str] | None = None) -> "AnswerVocab":
        """The union of the QA answers of pretraining entries, through `convert_ans`."""
        raw = collections.Counter()   # convert_ans once per distinct answer, not per occurrence
        for e in entries:
            for src, labels in e.labelf.items():
                if sources is not None and src not in sources:
                    continue
                for label in labels:
                    raw.update(label.keys())
        counts = collections.Counter()
        for ans, n in raw.items():
            counts[convert_ans(ans)] += n
        counts.pop("", None)
        return cls(sorted(counts, key=lambda a: (-counts[a], a)))

    @classmethod
    def union(cls, *vocabs: "AnswerVocab") -> "AnswerVocab":
        seen: dict[str, None] = {}
        for v in vocabs:
            for a in v.answers:
                seen.setdefault(a, None)
        return cls(list(seen))

    def save(self, path: str | os.PathLike) -> None:
        write_json(path, self.answers, indent=None)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "AnswerVocab":
        """A JSON list (`trainval_label2ans.json`) or dict answer->label (`ans2label`) or LXMERT's
        `all_ans.json` (list of `{"ans": ...}`)."""
        from pipeline.readers.strict_json import Where, load_json

        data = load_json(path)
        where = Where(path)
        if isinstance(data, dict):
            for k, v in data.items():
                where[k].check(v, int)
            ordered = sorted(data, key=data.__getitem__)
            if [data[a] for a in ordered] != list(range(len(ordered))):
                raise PipelineError("answer -> label map is not 0..N-1", path)
            return cls(ordered)
        answers = []
        for w, item in where.items(data):
            answers.append(w.get(item, "ans", str) if isinstance(item, dict) else w.check(item, str))
        try:
            return cls(answers)
        except ValueError as err:
            raise PipelineError(str(err), path) from None

    def to_json(self) -> str:
        return json.dumps(self.answers)

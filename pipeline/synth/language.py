"""Words for the synthetic world: plurals, numbers, and how annotators vary an answer."""

from __future__ import annotations

import numpy as np

NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]


def plural(shape: str) -> str:
    return shape + ("es" if shape.endswith(("s", "x", "sh", "ch")) else "s")


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def count_phrase(n: int, noun_singular: str) -> str:
    if n == 0:
        return f"no {plural(noun_singular)}"
    return f"{NUMBER_WORDS[n] if n < len(NUMBER_WORDS) else n} {noun_singular if n == 1 else plural(noun_singular)}"


def answer_variant(rng: np.random.Generator, answer: str, answer_type: str) -> str:
    """How one annotator might write `answer`: case, punctuation, articles, number words,
    synonyms. All but the synonyms ("grey") normalise back to `answer` under the official
    VQA rules, so, as with real annotators, a synonym earns no credit for the other spelling."""
    options = [answer.capitalize(), answer + ".", answer.upper() if len(answer) <= 3 else answer + "!"]
    if answer_type == "number" and answer.isdigit() and int(answer) < len(NUMBER_WORDS):
        options += [NUMBER_WORDS[int(answer)]] * 3
    if answer == "gray":
        options += ["grey"] * 2
    if answer_type == "other" and answer not in ("left", "right", "small", "medium", "large"):
        options += [f"{article(answer)} {answer}", f"the {answer}"]
    return options[int(rng.integers(len(options)))]


def annotator_answers(rng: np.random.Generator, answer: str, answer_type: str, wrong: list[str],
                      n: int = 10) -> list[str]:
    """`n` human-like answers: mostly the right one, some written differently, a few wrong
    (the disagreement rate differs per question, as it does for real annotators)."""
    noise = float(rng.choice([0.0, 0.0, 0.05, 0.1, 0.2]))
    if answer_type == "yes/no":   # annotators rarely disagree on yes/no, and each "no" earns partial credit
        noise /= 2
    out = []
    for _ in range(n):
        r = rng.random()
        if wrong and r < noise:
            out.append(wrong[int(rng.integers(len(wrong)))])
        elif rng.random() < 0.15:
            out.append(answer_variant(rng, answer, answer_type))
        else:
            out.append(answer)
    return out

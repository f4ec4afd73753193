"""Copy answer-head rows between answer vocabularies by answer string (docs/reference/lxmert.md §1.4).

The original `load_lxmert_qa` builds a VQA (3129) or GQA (1842) head from the pretrained
9500-way head: each target answer, normalised as LXMERT's `AnswerTable.convert_ans`, takes
the source row of the same answer; unmatched rows get weight 0 and bias 0. The hidden layers
of the head (`logit_fc.0`, `logit_fc.2`) are copied as they are by the caller.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

# LXMERT's ANS_CONVERT table (src/pretrain/qa_answer_table.py)
_ANSWER_ALIASES = {
    "a man": "man", "the man": "man", "a woman": "woman", "the woman": "woman",
    "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10", "grey": "gray",
}


def lxmert_answer_key(answer: str) -> str:
    """LXMERT's answer normalisation: lowercase, drop a trailing '.', drop a leading
    'a '/'an '/'the ', then the alias table."""
    answer = answer.lower()
    if answer.endswith("."):
        answer = answer[:-1]
    for article in ("a ", "an ", "the "):
        if answer.startswith(article):
            answer = answer[len(article):]
            break
    return _ANSWER_ALIASES.get(answer, answer)


def answer_list(answers) -> list[str]:
    """Row-ordered answer names from a label2ans list, an ans2label dict, or LXMERT's
    all_ans.json entries ({"ans": ..., "dsets": [...]})."""
    if isinstance(answers, Mapping):
        ordered = sorted(answers.items(), key=lambda item: item[1])
        if [index for _, index in ordered] != list(range(len(ordered))):
            raise ValueError("ans2label indices are not 0..n-1")
        return [name for name, _ in ordered]
    return [a["ans"] if isinstance(a, Mapping) else str(a) for a in answers]


@torch.no_grad()
def transfer_answer_rows(source_weight: torch.Tensor, source_bias: torch.Tensor,
                         source_answers: Sequence[str] | Mapping[str, int],
                         target_linear: torch.nn.Linear,
                         target_answers: Sequence[str] | Mapping[str, int],
                         normalize: Callable[[str], str] = lxmert_answer_key) -> int:
    """Fill `target_linear` (rows = target answers) from the source rows of the same answer.

    Source answers are looked up as they are and, failing that, normalised; target answers
    are normalised (the reference rule). Unmatched rows become 0. Returns how many matched.
    """
    source = answer_list(source_answers)
    target = answer_list(target_answers)
    if len(source) != source_weight.shape[0]:
        raise ValueError(f"{len(source)} source answers for a head with {source_weight.shape[0]} rows")
    if len(target) != target_linear.weight.shape[0]:
        raise ValueError(f"{len(target)} target answers for a head with {target_linear.weight.shape[0]} rows")
    if source_weight.shape[1] != target_linear.weight.shape[1]:
        raise ValueError(f"answer heads of different widths: {source_weight.shape[1]} vs "
                         f"{target_linear.weight.shape[1]}")
    index: dict[str, int] = {}
    for row, name in enumerate(source):
        index.setdefault(name, row)
    for row, name in enumerate(source):
        index.setdefault(normalize(name), row)
    rows_from, rows_to = [], []
    for row, name in enumerate(target):
        found = index.get(normalize(name), index.get(name))
        if found is not None:
            rows_to.append(row)
            rows_from.append(found)
    weight = torch.zeros_like(target_linear.weight)
    bias = torch.zeros_like(target_linear.bias)
    if rows_to:
        to = torch.tensor(rows_to)
        frm = torch.tensor(rows_from)
        weight[to] = source_weight[frm].to(weight)
        bias[to] = source_bias[frm].to(bias)
    target_linear.weight.copy_(weight)
    target_linear.bias.copy_(bias)
    return len(rows_to)


@torch.no_grad()
def transfer_answer_head(source_head: torch.nn.Module, source_answers, target_head: torch.nn.Module,
                         target_answers, normalize: Callable[[str], str] = lxmert_answer_key) -> int:
    """Whole-head version (`answer_head` of either model, or anything with `logit_fc`): the
    hidden layers `logit_fc.0`/`.2` are copied, the answer rows of `logit_fc.3` transferred by
    answer string (`load_lxmert_qa`). Returns how many target answers matched."""
    source_fc, target_fc = source_head.logit_fc, target_head.logit_fc
    for index in (0, 2):
        target_fc[index].weight.copy_(source_fc[index].weight)
        target_fc[index].bias.copy_(source_fc[index].bias)
    return transfer_answer_rows(source_fc[3].weight, source_fc[3].bias, source_answers, target_fc[3],
                                target_answers, normalize)

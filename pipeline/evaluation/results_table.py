"""A plain-text table of every metric of one evaluation, for the terminal."""

from __future__ import annotations

from typing import Any

_MAIN = {
    "vqa": ("overall", "yes/no", "number", "other"),
    # eval.py prints in this order: binary, open, accuracy, consistency, validity, plausibility, distribution
    "gqa": ("binary", "open", "accuracy", "consistency", "validity", "plausibility", "distribution"),
    "nlvr2": ("accuracy", "consistency"),
}
_BREAKDOWNS = {
    "vqa": (("per_question_type", "accuracy per question type"),),
    "gqa": (("per_structural_type", "accuracy per structural type"),
            ("per_semantic_type", "accuracy per semantic type"),
            ("per_steps", "accuracy per number of reasoning steps"),
            ("per_length", "accuracy per number of words")),
    "nlvr2": (),
}


def _value(name: str, value: Any) -> str:
    if value is None:
        return f"{'n/a':>7} "
    if name == "distribution":
        return f"{value:>7.2f}  (chi-square / 100, lower is better)"
    return f"{value:>7.2f}%"


def _sort_key(key: Any):
    text = str(key)
    return (0, int(text), "") if text.lstrip("-").isdigit() else (1, 0, text)


def format_table(record: dict[str, Any]) -> str:
    task = record["task"]
    lines = [f"{task} {record['split']}: {record.get('evaluator', '')}"]
    counts = {k: record[k] for k in ("questions", "examples", "groups") if k in record}
    if counts:
        lines.append("  " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    unavailable = record.get("unavailable") or {}
    names = _MAIN[task]
    width = max(len(n) for n in names) + 2
    for name in names:
        value = record.get(name)
        reason = f"  {unavailable[name]}" if value is None and name in unavailable else ""
        lines.append(f"  {name:<{width}}{_value(name, value)}{reason}")
    for key, title in _BREAKDOWNS[task]:
        table = record.get(key) or {}
        if not table:
            continue
        lines.append(f"{title}:")
        width = max(len(str(k)) for k in table) + 2
        for k in sorted(table, key=_sort_key):
            entry = table[k]
            if isinstance(entry, dict):
                lines.append(f"  {str(k):<{width}}{_value('', entry['accuracy'])} ({entry['questions']} questions)")
            else:
                lines.append(f"  {str(k):<{width}}{_value('', entry)}")
    for note in record.get("notes") or []:
        lines.append(f"note: {note}")
    if record.get("submission"):
        lines.append(f"submission: {record['submission']}")
    return "\n".join(lines)

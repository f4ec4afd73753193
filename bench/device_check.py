"""The bookkeeping of bench/device_check.sh, standard library only (it runs before the project
is installed): one JSON record per step, the machine's description, and the final report.

    python bench/device_check.py record OUT NAME STATUS RC SECONDS LIMIT [RESULT_JSON] [JUNIT_XML]
    python bench/device_check.py machine            (JSON on stdout; imports torch if it can)
    python bench/device_check.py report OUT         (OUT/device_check.json + OUT/device_check.md)

A step's record holds its status (ok / failed / timeout / skipped), exit code, seconds, its
time limit, the tails of its stdout and stderr (OUT/logs/NAME.out, .err) and what it measured:
the rows of its benchmark JSON, or the pytest counts of its JUnit XML.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

TAIL_CHARS = 1500


def tail(path: Path, chars: int = TAIL_CHARS) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return text[-chars:]


def junit_counts(path: Path) -> dict | None:
    """passed / failed / errors / skipped of a pytest JUnit XML, with the failing tests' names."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    failing, skipped_reasons = [], {}
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        if case.find("failure") is not None:
            counts["failed"] += 1
            failing.append(name)
        elif case.find("error") is not None:
            counts["errors"] += 1
            failing.append(name)
        elif (skip := case.find("skipped")) is not None:
            counts["skipped"] += 1
            reason = (skip.get("message") or "").strip()
            skipped_reasons[reason] = skipped_reasons.get(reason, 0) + 1
        else:
            counts["passed"] += 1
    return {**counts, "failing": failing, "skipped_reasons": skipped_reasons}


def record(out: Path, name: str, status: str, rc: str, seconds: str, limit: str, result: str = "",
           junit: str = "") -> None:
    entry = {"step": name, "status": status, "rc": int(rc) if rc.lstrip("-").isdigit() else None,
             "seconds": round(float(seconds), 1), "limit_s": int(float(limit)), "finished": time.time(),
             "stdout_tail": tail(out / "logs" / f"{name}.out", 600),
             "stderr_tail": tail(out / "logs" / f"{name}.err")}
    if result:
        try:
            entry["result"] = json.loads(Path(result).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            entry["result_error"] = f"{result}: {err}"
    if junit:
        entry["pytest"] = junit_counts(Path(junit))
    (out / "steps").mkdir(parents=True, exist_ok=True)
    (out / "steps" / f"{name}.json").write_text(json.dumps(entry, indent=1), encoding="utf-8")


def machine() -> dict:
    info = {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count()}
    if shutil.which("nvidia-smi"):
        try:
            info["nvidia_smi"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.TimeoutExpired) as err:
            info["nvidia_smi"] = f"failed: {err}"
    try:
        import torch
    except ImportError as err:
        info["torch"] = f"not importable: {err}"
        return info
    info["torch"] = torch.__version__
    info["torch_cuda"] = torch.version.cuda
    info["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
        info["bf16_supported"] = torch.cuda.is_bf16_supported()
    return info


# ---- the report ------------------------------------------------------------------------------

def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)[:60]
    return str(value)


def _rows_table(rows: list[dict], limit: int = 24) -> list[str]:
    """A markdown table of benchmark rows: the scalar keys every row shares, in first-seen order."""
    rows = [r for r in rows if isinstance(r, dict)][:limit]
    if not rows:
        return []
    keys = [k for k in rows[0] if all(k in r and not isinstance(r[k], (dict, list)) for r in rows)]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(_fmt(r[k]) for k in keys) + " |" for r in rows]
    return lines


def _rows(result) -> list[dict]:
    if isinstance(result, list):
        return result
    if isinstance(result, dict):
        for key in ("rows", "results", "runs"):
            if isinstance(result.get(key), list):
                return result[key]
    return []


def _summary(entry: dict) -> str:
    if entry.get("pytest"):
        p = entry["pytest"]
        text = f"{p['passed']} passed, {p['failed']} failed, {p['errors']} errors, {p['skipped']} skipped"
        if p["failing"]:
            text += "; failing: " + ", ".join(p["failing"][:4])
        return text
    if entry["status"] in ("failed", "timeout"):
        last = [line for line in entry.get("stderr_tail", "").splitlines() if line.strip()]
        return (last[-1][:160] if last else f"exit code {entry['rc']}").replace("|", "/")
    rows = _rows(entry.get("result"))
    if rows:
        return f"{len(rows)} rows (below)"
    return entry.get("note", "") or (entry.get("stdout_tail", "").strip().splitlines() or [""])[-1][:160].replace("|", "/")


def report(out: Path) -> None:
    steps = sorted((json.loads(p.read_text(encoding="utf-8")) for p in (out / "steps").glob("*.json")),
                   key=lambda e: e["finished"])
    machine_file = out / "machine.json"
    info = json.loads(machine_file.read_text(encoding="utf-8")) if machine_file.exists() else {}
    gpu = bool(info.get("cuda_available"))
    summary = {"mode": "cuda" if gpu else "cpu-fallback", "machine": info,
               "seconds": round(sum(e["seconds"] for e in steps), 1),
               "all_ok": all(e["status"] in ("ok", "skipped") for e in steps), "steps": steps}
    (out / "device_check.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")

    lines = [f"# device check ({summary['mode']})", "",
             f"machine: {info.get('gpus') or info.get('nvidia_smi') or 'no GPU'}; torch {info.get('torch')} "
             f"(CUDA {info.get('torch_cuda')}); python {info.get('python')}; {info.get('cpus')} CPUs", "",
             "| step | status | seconds | limit | result |", "|---|---|---|---|---|"]
    for e in steps:
        lines.append(f"| {e['step']} | {e['status']} | {e['seconds']:.0f} | {e['limit_s']} | {_summary(e)} |")
    lines += ["", f"total {summary['seconds']:.0f} s; " + ("every step ok" if summary["all_ok"] else "NOT every step ok")]
    for e in steps:
        table = _rows_table(_rows(e.get("result")))
        if table:
            lines += ["", f"## {e['step']}", "", *table]
    (out / "device_check.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    command, *rest = argv
    if command == "record" and 6 <= len(rest) <= 8:
        record(Path(rest[0]), *rest[1:])
    elif command == "machine" and not rest:
        print(json.dumps(machine(), indent=1))
    elif command == "report" and len(rest) == 1:
        report(Path(rest[0]))
    else:
        print(f"device_check.py: unknown command or arguments {argv!r}\n{__doc__}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Machine-readable results beside the Markdown: small JSON files that several commands update in place.

`update_results_json(path, entries)` merges ``entries`` (nested dicts whose leaves are the result
records of one method) into the JSON file at ``path``: records this command produced replace the old
ones, every other record is kept, so the table can be filled by several commands (e.g. one per zoo or
per method) and a rerun of one of them updates only its rows. Every record carries the command that
produced it (``"command"``) and the date (``"date"``, UTC).
"""

from __future__ import annotations

import datetime
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any


def command_line(prog: str, argv: list[str] | None) -> str:
    """The command as typed: ``prog`` followed by the arguments (``sys.argv[1:]`` when ``argv`` is None)."""
    return prog + " " + shlex.join(sys.argv[1:] if argv is None else argv)


def _merge(old: dict[str, Any], new: dict[str, Any], depth: int) -> dict[str, Any]:
    out = dict(old)
    for k, v in new.items():
        out[k] = _merge(out.get(k, {}) if isinstance(out.get(k), dict) else {}, v, depth - 1) if depth > 1 else v
    return out


def update_results_json(path: str | Path, entries: dict[str, Any], depth: int, command: str) -> dict[str, Any]:
    """Merge ``entries`` into the JSON at ``path`` (created if missing) and return the whole content.

    ``depth`` is the nesting level of the result records (accuracy: zoo / split / method = 3; INR:
    method = 1, or section / method = 2); each record gets ``command`` and ``date`` added. The file is
    written atomically (temporary file, then rename).
    """
    path = Path(path)
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")

    def stamp(d: dict[str, Any], level: int) -> dict[str, Any]:
        if level == 0:
            return {**d, "command": command, "date": date}
        return {k: stamp(v, level - 1) for k, v in d.items()}

    old = json.loads(path.read_text()) if path.is_file() else {}
    merged = _merge(old, stamp(entries, depth), depth)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(merged, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return merged


def accuracy_markdown(data: dict[str, Any]) -> str:
    """The accuracy-prediction table of ``docs/results/accuracy.json``: rows split x method, columns R² and τ per zoo."""
    from experiments.accuracy.report import SPLIT_LABELS  # the split names the accuracy CLI writes

    zoos = list(data)
    methods = sorted({m for z in data.values() for s in z.values() for m in s})
    lines = ["| split | method | " + " | ".join(f"{z} R² | {z} τ" for z in zoos) + " |",
             "|---|---|" + "---:|---:|" * len(zoos)]
    for split in SPLIT_LABELS.values():
        for m in methods:
            recs = [data[z].get(split, {}).get(m) for z in zoos]
            if not any(recs):
                continue
            cells = [f"{r['r2_mean']:.3f} ± {r['r2_std']:.3f} | {r['tau_mean']:.3f} ± {r['tau_std']:.3f}" if r else "- | -"
                     for r in recs]
            lines.append(f"| {split} | {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python -m experiments.results docs/results/accuracy.json``: print its Markdown table (what the docs show)."""
    import argparse

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("accuracy_json")
    a = p.parse_args(argv)
    print(accuracy_markdown(json.loads(Path(a.accuracy_json).read_text())), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What redacting secrets costs on a large logs answer.

    python bench/redaction.py [--megabytes 1] [--repeat 20] [--json FILE]

Builds a logs answer as the ``logs`` tool returns it at its largest (``max_bytes`` defaults to 1 MiB:
``--megabytes``), as the MCP edge sees it (a dict whose ``text`` holds the lines), and times, per
number of known secrets (0, 1, 5, 20, 100; each with its JSON, URL and base64 forms):

- ``redact_data`` on the answer when no secret occurs in it (the common case);
- the same when every 100th line prints one secret (plainly, or base64-encoded);
- for scale: ``json.dumps`` of the same answer (what the transport does to it anyway), and a naive
  redactor that calls ``str.replace`` once per form.

Prints a Markdown table of medians (milliseconds) and MB/s. Nothing here asserts (see docs/secrets.md).
"""

from __future__ import annotations

import argparse
import base64
import json
import secrets
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from gateway.redact import Redactor, forms_of, marker  # noqa: E402 - run as a script from the repository

COUNTS = (0, 1, 5, 20, 100)


def _answer(megabytes: float, values: list[str], every: int) -> dict[str, Any]:
    lines = []
    size = 0
    i = 0
    while size < megabytes * 1024 * 1024:
        line = f"web | 2026-12-03T19:00:{i % 60:02d}Z INFO request {i} GET /api/items?page={i % 97} 200 {i % 311}ms"
        if values and every and i % every == 0:
            value = values[i % len(values)]
            shown = value if i % (2 * every) else base64.b64encode(value.encode()).decode()
            line += f" token={shown}"
        lines.append(line)
        size += len(line) + 1
        i += 1
    return {"project": "bench", "text": "\n".join(lines), "lines": len(lines), "truncated": True}


def _median_ms(func: Callable[[], object], repeat: int) -> float:
    func()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def _naive(forms: dict[str, str]) -> Callable[[str], str]:
    ordered = sorted(forms, key=len, reverse=True)

    def redact(text: str) -> str:
        for form in ordered:
            if form in text:
                text = text.replace(form, marker(forms[form]))
        return text

    return redact


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    for count in COUNTS:
        values = [f"S{secrets.token_urlsafe(15)}" for _ in range(count)]
        redactor = Redactor()
        redactor.add_many({f"SECRET_{n}": value for n, value in enumerate(values)})
        forms = {form: f"SECRET_{n}" for n, value in enumerate(values) for form in forms_of(value)}
        clean = _answer(args.megabytes, values, every=0)
        dirty = _answer(args.megabytes, values, every=100)
        size_mb = len(clean["text"]) / 1024 / 1024
        naive = _naive(forms)
        row = {
            "secrets": count,
            "forms": len(forms),
            "clean_ms": _median_ms(lambda: redactor.redact_data(clean), args.repeat),  # noqa: B023 - run at once
            "dirty_ms": _median_ms(lambda: redactor.redact_data(dirty), args.repeat),  # noqa: B023
            "naive_dirty_ms": _median_ms(lambda: naive(dirty["text"]), args.repeat),  # noqa: B023
            "json_dumps_ms": _median_ms(lambda: json.dumps(clean), args.repeat),  # noqa: B023
        }
        if count:
            redacted = redactor.redact_data(dirty)["text"]
            assert all(form not in redacted for form in forms)  # the bench measures a redactor that works
        row["clean_mb_s"] = size_mb / (row["clean_ms"] / 1000) if row["clean_ms"] else float("inf")
        rows.append(row)
    print(f"logs answer of {args.megabytes:g} MiB, median of {args.repeat} runs (ms)\n")
    print("| secrets | forms | no secret in it | 1 line in 100 holds one | naive str.replace | json.dumps |")
    print("|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['secrets']} | {row['forms']} | {row['clean_ms']:.2f} ({row['clean_mb_s']:.0f} MB/s) "
            f"| {row['dirty_ms']:.2f} | {row['naive_dirty_ms']:.2f} | {row['json_dumps_ms']:.2f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

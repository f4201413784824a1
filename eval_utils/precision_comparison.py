"""The same evaluation sections at a lower precision and at fp32, side by side (`evaluate.py --against-fp32`).

What int8 (or bf16) costs is only visible next to the fp32 numbers of the same held-out items and seeds.
Sampled numbers (t2i, fid) also move because a slightly different logit can draw a different token,
after which the two images go their own ways: read their differences against the spread between two fp32
seeds (docs/tasks/int8.md), not against zero. Greedy captions, bits per token and caption loss are
deterministic, so there any difference is the precision's.
"""
from __future__ import annotations

from typing import Any

from eval_utils.report import Section, flat_scalars


def is_share(value: float) -> bool:
    """Accuracies and other shares are fractions in [0, 1]; their differences are read in points."""
    return 0.0 <= value <= 1.0


def shown(key: str, row: dict[str, float]) -> bool:
    """Whether a number goes into the printed table: not a whole number that agrees (counts of prompts and
    objects, and accuracies of 0 or 1 at both precisions), not a per-group breakdown ("1 object",
    "2 objects"; "all" stays). The JSON keeps every number."""
    if row["difference"] == 0 and float(row["fp32"]).is_integer():
        return False
    return "/groups/" not in key or "/groups/all/" in key


def precision_comparison(precision: str, results: dict[str, Any], fp32_results: dict[str, Any]) -> Section:
    """Every number the sections report, at `precision` and at fp32, with the difference (`precision` minus
    fp32), and the largest difference among the printed 0-1 numbers (accuracies and shares), in points."""
    ours, theirs = flat_scalars(results, ""), flat_scalars(fp32_results, "")
    rows = {key.lstrip("/"): {"fp32": theirs[key], precision: ours[key], "difference": ours[key] - theirs[key]}
            for key in sorted(ours.keys() & theirs.keys())}
    table = {key: row for key, row in rows.items() if shown(key, row)}
    shares = [key for key, row in table.items() if is_share(row["fp32"]) and is_share(row[precision])]
    width = max((len(key) for key in table), default=6)
    lines = [f"{'number':{width}s}  {'fp32':>10s}  {precision:>10s}  {'difference':>10s}"]
    lines += [f"{key:{width}s}  {row['fp32']:10.4f}  {row[precision]:10.4f}  {row['difference']:+10.4f}"
              for key, row in table.items()]
    summary: dict[str, Any] = {"numbers": rows}
    if shares:
        worst = max(shares, key=lambda key: abs(table[key]["difference"]))
        points = 100 * table[worst]["difference"]
        summary["largest_share_difference"] = {"number": worst, "points": points}
        lines.append(f"largest difference among the 0-1 numbers (accuracies, shares): {points:+.1f} points, {worst}")
    return Section(f"{precision} against fp32", summary, "\n".join(lines))

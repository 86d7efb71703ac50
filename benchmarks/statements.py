"""Numbers-to-words for benchmark prose: intervals, paired differences and the sentences that state
them. A benchmark section never types a comparison ("X beats Y", "differences below 0.05 are
noise"); it calls these with its measured values, so a claim appears only where its interval
supports it. The numbers themselves (intervals, paired differences) come from `ndae.evaluation.paired`.
"""

from __future__ import annotations

import math

import numpy as np

from ndae.evaluation.paired import finite


def interval_text(d: float, low: float, high: float, digits: int = 3) -> str:
    if not np.isfinite(low):
        return f"difference {d:+.{digits}f}, no interval"
    return f"difference {d:+.{digits}f}, 95 % CI [{low:+.{digits}f}, {high:+.{digits}f}]"


def compare(name_a: str, name_b: str, difference: dict, digits: int = 3) -> str:
    """'A is higher than B (…)' only where the 95 % CI of A − B excludes 0; otherwise 'not
    distinguishable at this sample size (…)'."""
    d, low, high = difference["d"], difference["low"], difference["high"]
    if not np.isfinite(d):
        return f"{name_a} vs {name_b}: no common folds"
    detail = interval_text(d, low, high, digits) + f", over {difference['over']}"
    if np.isfinite(low) and low > 0:
        return f"{name_a} is higher than {name_b} ({detail})"
    if np.isfinite(high) and high < 0:
        return f"{name_a} is lower than {name_b} ({detail})"
    return f"{name_a} and {name_b} are not distinguishable at this sample size ({detail})"


def versus_chance(mean: float, low: float, high: float, chance: float = 0.5) -> str:
    """Where a C-index stands relative to chance, from its 95 % interval."""
    if not np.isfinite(low):
        return "one replicate: no interval"
    if low > chance:
        return "above chance"
    if high < chance:
        return "below chance"
    return f"{chance:g} inside the 95 % interval: not distinguishable from chance"


def half_width(differences: list[dict]) -> float:
    """The median half-width of the 95 % CIs of measured paired differences: the smallest difference
    this sample size resolves (nan without intervals)."""
    widths = [(x["high"] - x["low"]) / 2 for x in differences if np.isfinite(x.get("low", math.nan))]
    return float(np.median(widths)) if widths else math.nan


def verdict(difference: dict) -> str:
    """'higher' / 'lower' where the 95 % CI of a difference excludes 0, else 'not distinguishable'."""
    low, high = difference.get("low", math.nan), difference.get("high", math.nan)
    low, high = (math.nan if v is None else v for v in (low, high))
    if np.isfinite(low) and low > 0:
        return "higher"
    if np.isfinite(high) and high < 0:
        return "lower"
    return "not distinguishable"


def truth_reading(rows: list[dict], references: dict[str, str], label=lambda name: name, digits: int = 3) -> str:
    """The reading of a truth-aware table, from its numbers: against each of its `references`
    ({reference model: how the prose names it}) the models whose expected C is higher, lower or
    not distinguishable (95 % interval over cohort seeds), each with its difference and how often
    one study (one survival draw) sees it ahead; and how far one study's C moves."""
    sentences = []
    spread = finite([row.get("sd_per_draw") for row in rows])
    if spread.size:
        sentences.append(f"one study's CV Harrell's C moves with the survival draw alone by sd {np.median(spread):.{digits}f} "
                         "(median over models)")
    measured = []
    for reference, reference_name in references.items():
        groups: dict[str, list[str]] = {"higher": [], "lower": [], "not distinguishable": []}
        over = None
        for row in rows:
            difference = row.get("versus", {}).get(reference)
            if row["model"] == reference or not difference or not np.isfinite(difference.get("d") or math.nan):
                continue
            measured.append(difference)
            over = difference.get("over")
            ahead = difference.get("fraction_positive")
            share = f", ahead in {100 * ahead:.0f} % of single draws" if ahead is not None and np.isfinite(ahead) else ""
            interval = (f" [{difference['low']:+.{digits}f}, {difference['high']:+.{digits}f}]"
                        if difference.get("low") is not None and np.isfinite(difference["low"]) else " (no interval)")
            groups[verdict(difference)].append(f"{label(row['model'])} {difference['d']:+.{digits}f}{interval}{share}")
        parts = [f"{name}: " + "; ".join(items) for name, items in groups.items() if items]
        if parts:
            sentences.append(f"expected C against {reference_name} (95 % interval over {over}) — " + " — ".join(parts))
    resolution = half_width(measured)
    if np.isfinite(resolution):
        sentences.append(f"at this number of cohort seeds a difference in expected C is resolved to about "
                         f"±{resolution:.{digits}f} (median half-width of those intervals)")
    return " ".join(sentence[:1].upper() + sentence[1:] + "." for sentence in sentences)

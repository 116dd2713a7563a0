"""Level-matched fidelity of slices: samples against real held-out slices at the same slice level.

A slice is scored against the per-level real mean it correlates with best (``RealReference.own_mean``), and
how well any slice can match its mean depends strongly on the level: on the demo cohort a real slice through the
top of the brain (a simple oval) scores r ~0.98, one through the skull base ~0.89. A pooled median therefore
mixes two things: how faithful the slices are, and which levels they land on. A model that made only
supraventricular slices would win on the pooled median while missing half the anatomy.

This module separates the two:

* ``by_level`` - per matched level: count, median r and median Dice of the samples and of the real held-out
  slices.
* ``gap`` - for the levels both sides reach, the samples' median minus the real slices' median, averaged with
  the samples' counts as weights: "how far from real are the samples, at the levels they make". Zero means as
  faithful as real slices; positive means closer to the level mean than real slices are (smoother or more
  mean-like), negative means less faithful.
* ``coverage`` - the total-variation distance between the two level histograms (0 = the samples land on the
  levels in the proportions real slices do, 1 = disjoint), and the fraction of real levels no sample matched.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Mapping, Sequence

import numpy as np

MEASURES: tuple[str, ...] = ("corr_modality", "dice")


def _by_level(rows: Sequence[Mapping[str, Any]]) -> dict[int, list[Mapping[str, Any]]]:
    out: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
    for r in rows:
        if r.get("matched_level") is not None:
            out[int(r["matched_level"])].append(r)
    return dict(out)


def _median(rows: Sequence[Mapping[str, Any]], key: str) -> float | None:
    v = [float(r[key]) for r in rows if r.get(key) is not None and not np.isnan(r[key])]
    return float(np.median(v)) if v else None


def level_summary(samples: Sequence[Mapping[str, Any]], heldout: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The level-matched comparison (module docstring); None when the rows carry no slice level."""
    fake, real = _by_level(samples), _by_level(heldout)
    if not fake or not real:
        return None
    levels = sorted(set(fake) | set(real))
    table = [{"level": k, "n_samples": len(fake.get(k, [])), "n_real": len(real.get(k, [])),
              **{f"samples_{m}": _median(fake.get(k, []), m) for m in MEASURES},
              **{f"real_{m}": _median(real.get(k, []), m) for m in MEASURES}} for k in levels]
    gap: dict[str, Any] = {}
    for m in MEASURES:
        pairs = [(row["n_samples"], row[f"samples_{m}"] - row[f"real_{m}"]) for row in table
                 if row[f"samples_{m}"] is not None and row[f"real_{m}"] is not None]
        weight = sum(n for n, _ in pairs)
        gap[m] = {"mean_difference": float(sum(n * d for n, d in pairs) / weight) if weight else None,
                  "n_samples": int(weight), "levels": len(pairs)}
    n_fake, n_real = sum(len(v) for v in fake.values()), sum(len(v) for v in real.values())
    tv = 0.5 * sum(abs(len(fake.get(k, [])) / n_fake - len(real.get(k, [])) / n_real) for k in levels)
    missed = [k for k in real if k not in fake]
    return {"by_level": table, "gap": gap,
            "coverage": {"total_variation": float(tv), "real_levels": len(real), "levels_without_sample": len(missed),
                         "fraction_of_real_slices_at_levels_without_sample":
                             float(sum(len(real[k]) for k in missed) / n_real)},
            "reading": "gap: samples' median minus real held-out median at the same level, weighted by the samples' "
                       "counts (0 = as faithful as real slices; > 0 closer to the level mean than real slices are); "
                       "coverage: total-variation distance of the matched-level histograms"}


def levels_by_modality(samples: Sequence[Mapping[str, Any]],
                       heldout: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """:func:`level_summary` per modality (levels are numbered per modality, and so are their means)."""
    out = {}
    for m in sorted({r["modality"] for r in samples}):
        found = level_summary([r for r in samples if r["modality"] == m], [r for r in heldout if r["modality"] == m])
        if found is not None:
            out[m] = found
    return out


def level_markdown(levels: Mapping[str, Any], modality: str) -> list[str]:
    """fidelity.md lines for one modality: the gap, the coverage and the per-level table."""
    def f(x: float | None) -> str:
        return "-" if x is None else f"{x:.3f}"

    g, c = levels["gap"], levels["coverage"]
    lines = ["", f"## {modality} by slice level (samples vs real held-out at the same level)", "",
             f"Level-matched gap, samples minus real held-out (weighted by the samples per level): r "
             f"{f(g['corr_modality']['mean_difference'])}, Dice {f(g['dice']['mean_difference'])} over "
             f"{g['corr_modality']['levels']} levels. Coverage: total-variation distance of the level histograms "
             f"{c['total_variation']:.3f}; {c['levels_without_sample']} of {c['real_levels']} real levels matched by "
             f"no sample ({c['fraction_of_real_slices_at_levels_without_sample']:.0%} of the real slices).", "",
             "| level | samples | r | Dice | real | r | Dice |", "|---|---|---|---|---|---|---|"]
    for row in levels["by_level"]:
        lines.append(f"| {row['level']} | {row['n_samples']} | {f(row['samples_corr_modality'])} | "
                     f"{f(row['samples_dice'])} | {row['n_real']} | {f(row['real_corr_modality'])} | "
                     f"{f(row['real_dice'])} |")
    return lines

"""What a comparison shows: the Markdown report, the CSVs and the terminal table.

The Markdown says how every number was computed, so a report read months later still explains
why a row says "undecided" while its mean difference looks large.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import Any

import pandas as pd

from harness.compare.ablation import Recommendation

__all__ = ["markdown_report", "compare_csv", "print_table", "format_table_rows", "TABLE_COLUMNS"]


def _num(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def _p(value: float) -> str:
    if value is None or math.isnan(value):
        return "-"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def _signed(value: float, digits: int = 3) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:+.{digits}f}"


def _ci(lo: float, hi: float) -> str:
    return "-" if math.isnan(lo) else f"[{lo:+.3f}, {hi:+.3f}]"


TABLE_COLUMNS = ("config", "video AUC (mean ± std)", "Δ vs baseline", "interval", "seeds", "verdict",
                 "seeds to decide", "val-AUC volatility", "stability")


def _seeds_needed(value: float) -> str:
    if value is None or math.isnan(value):
        return ""
    return "never at this spread" if math.isinf(value) else f"~{int(value)}"


def format_table_rows(summary: pd.DataFrame, comparison: pd.DataFrame) -> list[list[str]]:
    """The terminal table's rows (also the README example): one per config, baseline first."""
    comp = comparison.set_index("config") if len(comparison) else pd.DataFrame()
    rows = []
    for _, s in summary.iterrows():
        c = comp.loc[s["config"]] if s["config"] in comp.index else None
        auc = f"{_num(s['video_auc_mean'])} ± {_num(s['video_auc_std'])}"
        if c is None:
            rows.append([s["config"], auc, "(baseline)", "", "", "", "", _num(s["val_auc_volatility_mean"]), ""])
            continue
        stability = c["volatility_verdict"] if c["volatility_verdict"] != "not distinguishable" else "-"
        if c["spread_verdict"] != "not distinguishable":
            stability += f" (spread: {c['spread_verdict']})"
        seeds = str(c["n_pairs"]) if math.isnan(c["decided_at"]) else f"{int(c['decided_at'])} of {c['n_pairs']}"
        rows.append([s["config"], auc, _signed(c["diff_at_decision"]), _ci(c["verdict_ci_low"], c["verdict_ci_high"]),
                     seeds, c["verdict"], _seeds_needed(c["seeds_needed"]), _num(s["val_auc_volatility_mean"]),
                     stability])
    return rows


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def _summary_rows(summary: pd.DataFrame) -> list[list[str]]:
    rows = []
    for _, s in summary.iterrows():
        rows.append([
            s["config"], f"{s['n_seeds']}" + (f" ({s['n_failed']} failed)" if s["n_failed"] else ""),
            f"{_num(s['video_auc_mean'])} ± {_num(s['video_auc_std'])}",
            f"[{_num(s['video_auc_min'])}, {_num(s['video_auc_max'])}]",
            f"{_num(s['clip_auc_mean'])} ± {_num(s['clip_auc_std'])}",
            f"{_num(s['video_ap_mean'])} ± {_num(s['video_ap_std'])}",
            f"{_num(s['video_eer_mean'])} ± {_num(s['video_eer_std'])}",
            _num(s["best_epoch_mean"], 1), _num(s["wall_seconds_mean"], 0), _num(s["peak_mem_mb_max"], 0),
            _num(s["val_auc_volatility_mean"]),
        ])
    return rows


def _comparison_rows(comparison: pd.DataFrame) -> list[list[str]]:
    rows = []
    for _, c in comparison.iterrows():
        seed = "" if math.isnan(c["delong_seed"]) else f" (seed {int(c['delong_seed'])})"
        decided = "-" if math.isnan(c["decided_at"]) else str(int(c["decided_at"]))
        rows.append([
            c["config"], f"{c['family']}: {c['rule']}, α {c['alpha']:.3g}", c["seeds"] or "-", decided,
            _signed(c["diff_at_decision"]), _ci(c["verdict_ci_low"], c["verdict_ci_high"]),
            f"{_num(c['t'], 2)} vs ±{_num(c['t_bound'], 2)}", _p(c["p_paired_t"]), _p(c["p_paired_t_holm"]),
            _p(c["p_tost"]), _p(c["p_tost_holm"]), f"**{c['verdict']}**", _seeds_needed(c["seeds_needed"]) or "-",
            _ci(c["ci_low"], c["ci_high"]), _p(c["p_wilcoxon"]),
            f"{_signed(c['delong_auc_diff'])}, p {_p(c['delong_p'])}{seed}", c["delong_rejects"],
            "-" if math.isnan(c["volatility_diff"]) else
            f"{_signed(c['volatility_diff'])} {_ci(c['volatility_ci_low'], c['volatility_ci_high'])}",
            c["volatility_verdict"], f"{_num(c['spread_ratio'], 2)} (p {_p(c['spread_p_pitman_morgan'])})",
            c["spread_verdict"],
        ])
    return rows


def markdown_report(
    settings: dict[str, Any],
    summary: pd.DataFrame,
    comparison: pd.DataFrame,
    recommendations: Sequence[Recommendation],
    level: float,
    synthetic: bool,
    images: Sequence[str] = (),
) -> str:
    """The whole report as Markdown: settings, per-config table, comparisons, recommendations, methods."""
    pct = f"{level:.0%}"
    baseline = summary["config"].iloc[0]
    lines = [f"# Comparison `{settings['name']}`", ""]
    if synthetic:
        lines += ["> **Synthetic data.** These runs trained on the embedded synthetic FF++-shaped data set. The "
                  "numbers test the harness and the statistics; they say nothing about FaceForensics++.", ""]
    lines += ["## Summary", ""]
    lines += _md_table(TABLE_COLUMNS, format_table_rows(summary, comparison))
    lines += ["", "## Settings", ""]
    lines += [f"- {key}: `{value}`" for key, value in settings.items()]
    lines += ["", "## Per config (test split, best checkpoint of each run)", ""]
    lines += _md_table(["config", "seeds", "video AUC", "[min, max]", "clip AUC", "video AP", "video EER",
                        "best epoch", "wall s", "peak MiB", "val-AUC volatility"], _summary_rows(summary))
    margin = settings.get("margin", 0.01)
    lines += ["", f"## Against `{baseline}` (paired by seed; level {pct}; equivalence margin ±{margin})", ""]
    if len(comparison):
        lines += _md_table(["config", "family, rule, α", "seeds", "decided at", "Δ video AUC", "interval", "t vs bound",
                            "p t", "p t Holm", "p TOST", "p TOST Holm", "verdict", "seeds to decide",
                            f"{pct} CI (bootstrap, descriptive)", "p Wilcoxon", "DeLong Δ AUC", f"DeLong p<{1 - level:.2g}",
                            "Δ volatility [CI]", "volatility", "spread ratio", "spread"], _comparison_rows(comparison))
    if recommendations:
        lines += ["", "## Recommendations ablated (derived from the config diff)", ""]
        def keys(ks: Sequence[str]) -> str:
            return ", ".join(f"`{k}`" for k in ks) or "-"

        lines += _md_table(["recommendation", "keys", "carried when added (schema)", "carried when removed (schema)"],
                           [[r.name, keys(r.keys), keys(r.carried_add), keys(r.carried_remove)] for r in recommendations])
        names = {r.name for r in recommendations}
        if "balanced sampler" not in names:
            lines += ["", "No `balanced sampler` row: the two configs do not differ in `data.sampler` (the advice's "
                      "final config picks focal loss, not the sampler). Compare a config with `data.sampler: balanced` "
                      "to test that claim."]
    lines += ["", "## How to read it", ""]
    lines += [
        f"- Seeds are the unit of replication. Seed k gives every config the same initial head, data order and "
        f"augmentation draws; differences are taken seed by seed and only over seeds where both runs finished.",
        f"- Each contrast is the per-seed difference in test video AUC against `{baseline}`, decided as **better** "
        f"or **worse** (the paired t statistic crosses its two-sided bound), **equivalent** (two one-sided tests "
        f"against ±{margin} both cross their one-sided bound: the difference is smaller than the margin) or "
        "**undecided**. `interval` is the verdict's own interval (mean ± bound x standard error); "
        "`seeds to decide` estimates how many seeds the observed mean and spread would need to reach a verdict.",
        "- The family: the primary contrast (the second config against the baseline) is tested at the full level; "
        "every other row (further configs, ablations) is secondary. With a fixed `--seeds N` the secondary rows' "
        "p-values are Holm-adjusted (superiority and equivalence each over the secondary rows; the `p Holm` "
        "columns decide them). With `--seeds auto` each secondary row gets α divided by their number (Bonferroni).",
        "- `--seeds auto` runs seed rounds (every config still undecided, and the baseline, get seed k) and looks "
        "after every round from 3 seeds on; a contrast decided at a look is frozen and its config gets no more "
        "seeds. Repeated looks would inflate false verdicts if each used the fixed-sample t quantile, so the bounds "
        "are group-sequential: α is spent over the looks by the Lan-DeMets Pocock-type function, with the bounds "
        "found by simulating the t statistics' joint law under no difference (`harness/compare/sequential.py`). "
        "`decided at` is the seed count of that look; `Δ video AUC` and `interval` are as of that look.",
        "- The bootstrap interval is descriptive only: an expanded percentile bootstrap of the mean paired "
        "difference (Hesterberg 2015), over all paired seeds; no bootstrap interval of a mean reaches outside the "
        "observed differences, so with few seeds it covers less than asked. Wilcoxon is shown for reference; its "
        "smallest two-sided p-value is 2/2^n (0.25 with 3 seeds).",
        "- DeLong (fast midrank form, Sun & Xu 2014) compares the two AUCs on one seed's pooled test videos (all "
        "methods together). It measures only test-set sampling noise, not how much another seed would move a run; "
        "`DeLong p<α` counts the seeds on which it rejects.",
        "- Stability: volatility is the mean absolute change of validation video AUC between consecutive "
        "validations. Against the baseline it is measured, seed by seed, on the epochs both runs validated (a "
        "config validating every 2 epochs and one validating every epoch are both measured over 2-epoch steps), "
        "and compared with the paired t-test and bootstrap interval, lower is steadier. Spread is the ratio of the test-AUC standard deviations across "
        "seeds, tested with Pitman-Morgan (paired variances).",
        "- Peak memory is CUDA's max allocated memory and is empty on CPU.",
    ]
    for image in images:
        lines += ["", f"![{image}]({image})"]
    return "\n".join(lines) + "\n"


def compare_csv(summary: pd.DataFrame, comparison: pd.DataFrame) -> pd.DataFrame:
    """One row per config: its summary, then its comparison with the baseline (empty on the baseline's row)."""
    if not len(comparison):
        return summary.copy()
    return summary.merge(comparison, on="config", how="left")


def print_table(summary: pd.DataFrame, comparison: pd.DataFrame, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for col in TABLE_COLUMNS:
        table.add_column(col, justify="left" if col in ("config", "verdict", "stability") else "right")
    for row in format_table_rows(summary, comparison):
        table.add_row(*row)
    Console(width=None if sys.stdout.isatty() else 200).print(table)

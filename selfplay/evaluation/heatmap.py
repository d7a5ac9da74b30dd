"""The league heatmap: W[i][j] = P(row ≻ column) with its interval in each cell,
and each policy's exploitability (with its interval) in a side column."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def plot_win_rates(report: dict, path, *, title: str | None = None) -> Path:
    """Write the heatmap of a `selfplay.games.league.league_report` dict to ``path``
    (PNG; matplotlib's Agg backend, no display needed) and return the path.

    Colours: a diverging map centred at ½ (red: row loses, blue: row wins), so an
    even matchup is white. Cells read "0.62\\n[0.55,0.69]"; the right-hand column
    is ``2·max_{j≠i} W[j][i] − 1`` for the row's policy, with its interval. With an
    ``exploiter`` section (`selfplay eval --exploiter best-of-N`) a last row, below a
    bold line and labelled in italics, holds the exploiter's win rate against each
    column's policy: a row from outside the league.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    names = list(report["policies"])
    m = len(names)
    W = np.array([[np.nan if x is None else x for x in row] for row in report["win_rate"]])
    low, high = report["ci_low"], report["ci_high"]
    expl = report.get("exploitability") or [None] * m
    elo = report.get("elo")
    nash = report.get("league_nash")
    ex = report.get("exploiter")
    rows = m + (ex is not None)
    if ex is not None:
        got = [ex["policies"].get(n, {}) for n in names]
        W = np.vstack([W, [np.nan if g.get("win_rate") is None else g["win_rate"] for g in got]])

    side = 1.6
    fig = Figure(figsize=(1.2 * m + 2.2 + side, 1.0 * rows + 1.6), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(1, 2, width_ratios=[m, 1.1])
    ax, ax_e = fig.add_subplot(grid[0]), fig.add_subplot(grid[1])
    cmap = "RdBu"
    im = ax.imshow(W, cmap=cmap, norm=Normalize(0.0, 1.0), aspect="auto")
    for i in range(m):
        for j in range(m):
            if i == j:
                text = "—"
            else:
                text = f"{_fmt(report['win_rate'][i][j])}\n[{_fmt(low[i][j])},{_fmt(high[i][j])}]"
            dark = np.isfinite(W[i, j]) and abs(W[i, j] - 0.5) > 0.3
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="white" if dark else "black")  # fmt: skip
    if ex is not None:
        for j, g in enumerate(got):
            text = f"{_fmt(g.get('win_rate'))}\n[{_fmt(g.get('ci_low'))},{_fmt(g.get('ci_high'))}]"
            dark = np.isfinite(W[m, j]) and abs(W[m, j] - 0.5) > 0.3
            ax.text(j, m, text, ha="center", va="center", fontsize=8, style="italic",
                    color="white" if dark else "black")  # fmt: skip
        ax.axhline(m - 0.5, color="black", linewidth=2.5)
    labels = []
    for i, name in enumerate(names):
        extra = []
        if nash is not None:
            extra.append(f"NE {nash[i]:.2f}")
        if elo is not None:
            extra.append(f"Elo {elo[i]:.0f}")
        labels.append(name + ("\n" + " · ".join(extra) if extra else ""))
    ax.set_xticks(range(m), names, rotation=30, ha="right", fontsize=8)
    if ex is not None:
        labels.append(f"best-of-{ex['n']}\nexploiter ({ex['proposal']})")
    ax.set_yticks(range(rows), labels, fontsize=8)
    if ex is not None:
        ax.get_yticklabels()[m].set_fontstyle("italic")
    ax.set_xlabel("column policy j")
    ax.set_ylabel("row policy i")

    e = np.array([[np.nan if x is None else x] for x in expl] + [[np.nan]] * (rows - m))
    ax_e.imshow(e, cmap="Oranges", norm=Normalize(-0.2, 1.0), aspect="auto")
    lo_e = report.get("exploitability_low") or [None] * m
    hi_e = report.get("exploitability_high") or [None] * m
    for i in range(m):
        ax_e.text(0, i, f"{_fmt(expl[i])}\n[{_fmt(lo_e[i])},{_fmt(hi_e[i])}]",
                  ha="center", va="center", fontsize=8)  # fmt: skip
    ax_e.set_xticks([0], ["exploitability\n(of the row)"], fontsize=8)
    ax_e.set_yticks([])
    fig.colorbar(im, ax=[ax, ax_e], fraction=0.04, pad=0.02, label="W[i][j] = P(i ≻ j)")
    level = report.get("level", 0.95)
    fig.suptitle(title or f"League win rates, P(row ≻ column), {level:.0%} intervals", fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)  # checked writable before any work
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path

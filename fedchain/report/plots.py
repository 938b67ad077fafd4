"""The report's plots: matplotlib figures drawn from the report dict, as inline SVG elements.

matplotlib (and numpy with it) is imported inside the functions that draw: it costs about a
second, paid only when a page is rendered (never by ``--json-only`` or ``fedchain verify``).
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "draw_accuracy",
    "draw_contributions",
    "draw_epsilon",
    "draw_rewards",
    "draw_stake",
    "participant_colours",
    "plot_svg",
]


_PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)


def participant_colours(count: int) -> list[str]:
    """One colour per participant, the same in every plot and table (tab10, then tab20)."""
    if count <= len(_PALETTE):
        return list(_PALETTE[:count])
    from matplotlib import colormaps  # lazy: matplotlib costs ~1 s, paid only for a page
    from matplotlib.colors import to_hex

    cmap = colormaps["tab20"]
    return [to_hex(cmap(i % 20)) for i in range(count)]


_RC: dict[Any, Any] = {  # keys: matplotlib rcParams
    "svg.fonttype": "none",  # text stays text: smaller, selectable, uses the page's fonts
    "svg.hashsalt": "fedchain-report",  # deterministic ids: the same run gives the same page
    "font.family": "sans-serif",
    "font.size": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e4e7eb",
    "grid.linewidth": 0.8,
    "axes.edgecolor": "#9aa5b1",
    "axes.labelcolor": "#3e4c59",
    "xtick.color": "#52606d",
    "ytick.color": "#52606d",
    "legend.frameon": False,
}
_SVG_HEAD = re.compile(r"^.*?(?=<svg)", re.DOTALL)
_SVG_NAMESPACES = re.compile(r'\s+xmlns(?::xlink)?="[^"]*"')
_SVG_SIZE = re.compile(r'\s(?:width|height)="[\d.]+pt"')
_SVG_ID = re.compile(r'\bid="([^"]+)"')
_SVG_REF = re.compile(r'(href="#|url\(#)')


def plot_svg(
    draw: Callable[[Figure, Mapping[str, Any]], None],
    report: Mapping[str, Any],
    ident: str,
    size: tuple[float, float],
) -> str:
    """``draw`` on a new figure of ``size`` inches, in the report's style, as inline SVG."""
    import matplotlib  # lazy: matplotlib costs ~1 s, paid only for a page
    from matplotlib.figure import Figure

    with matplotlib.rc_context(_RC):
        figure = Figure(figsize=size, layout="constrained")
        draw(figure, report)
        buffer = io.StringIO()
        figure.savefig(
            buffer,
            format="svg",
            metadata={"Date": None, "Creator": None, "Format": None, "Type": None},
        )
    return _inline_svg(buffer.getvalue(), ident)


def _inline_svg(text: str, ident: str) -> str:
    """An SVG file as an ``<svg>`` element to inline in HTML5.

    The XML prolog, DOCTYPE and namespace declarations go (HTML's parser puts an inline ``svg``
    in the SVG namespace by itself), so the page names no external address; the fixed size goes
    too, so the plot scales with its column (the viewBox keeps its proportions). Ids get the
    plot's prefix: they must be unique across the page's several SVGs.
    """
    text = _SVG_HEAD.sub("", text, count=1)
    text = _SVG_NAMESPACES.sub("", text)
    text = _SVG_SIZE.sub("", text, count=2)
    text = _SVG_ID.sub(rf'id="{ident}-\1"', text)
    return _SVG_REF.sub(rf"\1{ident}-", text)


def _ticks(xs: Sequence[int]) -> list[int]:
    """At most about 20 tick positions."""
    step = max(1, math.ceil(len(xs) / 20))
    return list(xs[::step])


def draw_accuracy(figure: Figure, report: Mapping[str, Any]) -> None:
    """Accuracy (and loss, on its own axis) per round; round 0 is the initial model."""
    initial = report.get("initial_model") or {}
    points = [(0, initial.get("accuracy"), initial.get("loss"))]
    points += [(r["round"], r["accuracy"], r["loss"]) for r in report["rounds"]]
    accuracy = [(x, a * 100) for x, a, _ in points if a is not None]
    ax = figure.add_subplot()
    xs, ys = zip(*accuracy, strict=True)
    ax.plot(xs, ys, marker="o", color="#1f5fa8", linewidth=2, label="accuracy")
    ax.set_xlabel("round")
    ax.set_ylabel("accuracy (%)", color="#1f5fa8")
    ax.set_xticks(_ticks(xs))
    ax.annotate(
        f"{ys[-1]:.2f} %",
        (xs[-1], ys[-1]),
        textcoords="offset points",
        xytext=(0, 8),
        ha="center",
        color="#1f5fa8",
        fontweight="bold",
    )
    losses = [(x, loss) for x, _, loss in points if loss is not None]
    if losses:
        twin = ax.twinx()
        loss_x, loss_y = zip(*losses, strict=True)
        twin.plot(loss_x, loss_y, color="#9aa5b1", linestyle="--", marker=".", label="loss")
        twin.set_ylabel("loss", color="#7b8794")
        twin.grid(False)
        twin.spines["right"].set_visible(True)
        lines = ax.get_lines() + twin.get_lines()
        ax.legend(lines, [str(line.get_label()) for line in lines], loc="center right")


def draw_contributions(figure: Figure, report: Mapping[str, Any]) -> None:
    """The contribution heat map, each round normalised on its own: a cell is the client's
    score divided by the sum of the round's absolute scores (a share in -100 %..100 %), so a
    late round, whose scores are a hundred times smaller than the first round's, reads as
    clearly as the first. The colour bar says so."""
    import numpy as np  # lazy: matplotlib costs ~1 s, paid only for a page
    from matplotlib.colors import TwoSlopeNorm

    rounds = report["timeline"][1:]
    participants = report["participants"]
    grid = compute_round_shares(
        np.array(
            [
                [np.nan if v is None else v for v in p["contribution_by_round"][1:]]
                for p in participants
            ],
            dtype=float,
        )
    )
    ax = figure.add_subplot()
    ax.grid(False)
    ax.set_facecolor("#e4e7eb")  # rounds without a score show through as grey
    image = ax.imshow(
        np.ma.masked_invalid(100 * grid),
        cmap="RdBu",
        norm=TwoSlopeNorm(vmin=-100.0, vcenter=0.0, vmax=100.0),
        aspect="auto",
        interpolation="nearest",
    )
    figure.colorbar(image, ax=ax, fraction=0.04, pad=0.01).set_label(
        "% of the round's total |score|\n(each round normalised)"
    )
    ax.set_yticks(range(len(participants)), [p["name"] for p in participants])
    columns = _ticks(list(range(len(rounds))))
    ax.set_xticks(columns, [str(rounds[i]) for i in columns])
    ax.set_xlabel("round")
    for spine in ax.spines.values():
        spine.set_visible(False)
    if grid.size <= 240:
        for (row, col), value in np.ndenumerate(grid):
            if np.isfinite(value):
                colour = "white" if abs(value) > 0.6 else "#1f2933"
                ax.text(
                    col, row, f"{round(100 * value):d}", ha="center", va="center", fontsize=8,
                    color=colour,
                )  # fmt: skip


def compute_round_shares(grid: Any) -> Any:
    """Each column (round) of ``grid`` (participants x rounds, NaN: not scored) divided by the
    sum of its absolute finite values; a round whose scores are all 0 stays 0."""
    import numpy as np  # lazy, as above

    totals = np.nansum(np.abs(grid), axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, grid / np.where(totals > 0, totals, 1.0), grid)


def draw_rewards(figure: Figure, report: Mapping[str, Any]) -> None:
    _draw_series(figure, report, "rewards_by_round", "reward units (cumulative)")


def draw_stake(figure: Figure, report: Mapping[str, Any]) -> None:
    _draw_series(figure, report, "stake_by_round", "stake")


def draw_epsilon(figure: Figure, report: Mapping[str, Any]) -> None:
    """Each client's epsilon spent by the end of every round, and the budget (dashed)."""
    from matplotlib.ticker import FuncFormatter  # lazy, as above

    _draw_series(figure, report, "epsilon_by_round", "epsilon spent")
    ax = figure.axes[0]
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    budget = report["privacy"]["max_epsilon"]
    ax.axhline(budget, color="#667085", linestyle="--", linewidth=1.2)
    ax.annotate(
        f"budget {budget:g}", (0, budget), xytext=(2, 3), textcoords="offset points", fontsize=8
    )


def _draw_series(figure: Figure, report: Mapping[str, Any], key: str, label: str) -> None:
    from matplotlib.ticker import FuncFormatter, MaxNLocator  # lazy, as above

    timeline = report["timeline"]
    participants = report["participants"]
    colours = participant_colours(len(participants))
    ax = figure.add_subplot()
    stake = key == "stake_by_round"
    for p, colour in zip(participants, colours, strict=True):
        points = [(r, v) for r, v in zip(timeline, p[key], strict=True) if v is not None]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.6, color=colour, label=p["name"])
    if stake:
        _draw_slashings(ax, report, colours)
        _draw_min_stake(ax, report)
    ax.set_xlabel("round")
    ax.set_ylabel(label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    if len(participants) <= 12:
        ax.legend(fontsize=8, loc="best", ncol=2 if len(participants) > 6 else 1)


def _draw_slashings(ax: Axes, report: Mapping[str, Any], colours: Sequence[str]) -> None:
    timeline = report["timeline"]
    by_key = {p["public_key"]: p for p in report["participants"]}
    for event in report["events"]:
        p = by_key.get(event["public_key"])
        if event["kind"] != "slashed" or p is None or event["round"] not in timeline:
            continue
        value = p["stake_by_round"][timeline.index(event["round"])]
        if value is not None:
            ax.plot(
                [event["round"]],
                [value],
                marker="x",
                markersize=10,
                mew=2.5,
                color="#b42318",
                zorder=5,
            )


def _draw_min_stake(ax: Axes, report: Mapping[str, Any]) -> None:
    """The ejection line, only where a stake comes near it (else it would flatten the plot)."""
    min_stake = report["run"]["rules"]["min_stake"]
    stakes = [v for p in report["participants"] for v in p["stake_by_round"] if v is not None]
    if stakes and min(stakes) < 2 * min_stake:
        ax.axhline(min_stake, color="#b42318", linestyle=":", linewidth=1.2)
        ax.annotate(
            "minimum stake",
            (report["timeline"][-1], min_stake),
            xytext=(0, 3),
            textcoords="offset points",
            ha="right",
            color="#b42318",
            fontsize=8,
        )

"""The figures of a run: a fleet's valid accuracy, perplexity and epsilon against rounds
(fleet.png), and the demo's two fleets side by side (demo.png). The accuracy and perplexity
are federated evaluation by `valid` senders' phones, beside the central evaluation of the
same versions on the same words."""
from __future__ import annotations

from pathlib import Path
from typing import Any


def curve(ax: Any, records: list[dict], key: str, label: str, scale: float = 1.0,
          color: str | None = None) -> list[float]:
    """The learning curve of one figure: the federated evaluation with its 95% noise band
    (points the noise hides are left out), and the central evaluation of the same versions
    on the same words, dashed; returns the values drawn (for `fit_y`)."""
    evaluated = [r for r in records if r.get("valid")]
    rounds = [r["round"] for r in evaluated]
    nan = float("nan")
    value = [nan if r["valid"][key] is None else scale * r["valid"][key] for r in evaluated]
    ci = [r["valid"].get(key + "_ci") or [nan, nan] for r in evaluated]
    line, = ax.plot(rounds, value, marker="o", label=f"{label}, federated", color=color)
    if evaluated and all(v != v for v in value):
        ax.text(0.02, 0.02 + 0.06 * (len(ax.texts)), f"{label}, federated: hidden by the noise",
                transform=ax.transAxes, fontsize=7, color=line.get_color())
    ax.fill_between(rounds, [scale * c[0] for c in ci], [scale * c[1] for c in ci],
                    color=line.get_color(), alpha=0.15)
    central = [(r["round"], scale * r["valid_central"][key]) for r in evaluated
               if r.get("valid_central")]
    if central:
        ax.plot(*zip(*central), linestyle="--", color=line.get_color(),
                label=f"{label}, central (same words)")
    return [v for v in value if v == v] + [v for _, v in central]


def fit_y(ax: Any, values: list[float]) -> None:
    """Fit the axis to the curves' points, not to the widest noise bands."""
    if values:
        low, high = min(values), max(values)
        pad = max(0.1 * (high - low), 0.05 * abs(high), 1e-6)
        ax.set_ylim(low - pad, high + pad)


def plot_rounds(records: list[dict], path: Path, title: str) -> None:
    """valid top-1 / top-3, valid perplexity and epsilon against rounds, as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (acc, ppl, eps) = plt.subplots(1, 3, figsize=(14, 4))
    fit_y(acc, [v for key, label in (("top1", "top-1"), ("top3", "top-3"))
                for v in curve(acc, records, key, label, 100)])
    acc.set(xlabel="round", ylabel="accuracy (%)", title="global model on valid phones")
    acc.legend(fontsize=7)
    fit_y(ppl, curve(ppl, records, "perplexity", "perplexity", color="tab:green"))
    ppl.set(xlabel="round", ylabel="perplexity", title="perplexity on valid phones")
    ppl.legend(fontsize=7)
    points = [(r["round"], r["epsilon"]) for r in records if r.get("epsilon") is not None]
    if points:
        eps.plot(*zip(*points), marker=".", color="tab:red", label="against the server")
        users = [(r["round"], r["epsilon_model_users"]) for r in records
                 if r.get("epsilon_model_users") is not None]
        if users and users != points:
            eps.plot(*zip(*users), marker=".", color="tab:orange", label="against model users")
        eps.legend()
        delta = next((r["delta"] for r in records if r.get("delta")), None)
        eps.set(ylabel=f"epsilon (delta = {delta:g})")
    else:
        eps.text(0.5, 0.5, "no privacy guarantee\n(no noise)", ha="center",
                 va="center", transform=eps.transAxes)
        eps.set_yticks([])
    eps.set(xlabel="round", title="privacy spent: the most by any one device")
    save_figure(fig, (acc, ppl, eps), title, path)


def save_figure(fig: Any, axes: tuple, title: str, path: Path) -> None:
    """Grid, whole-number round ticks, a title; write the PNG and free the figure."""
    from matplotlib import pyplot as plt
    from matplotlib.ticker import MaxNLocator
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_demo(no_dp: list[dict], dp: list[dict], path: Path, title: str) -> None:
    """valid top-1 and perplexity of both fleets against rounds; epsilon of the DP fleet."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (acc, ppl, eps) = plt.subplots(1, 3, figsize=(15, 4.2))
    shown: dict[str, list[float]] = {"top1": [], "perplexity": []}
    for records, label in ((no_dp, "no DP"), (dp, "DP")):
        shown["top1"] += curve(acc, records, "top1", label, 100)
        shown["perplexity"] += curve(ppl, records, "perplexity", label)
    fit_y(acc, shown["top1"])
    fit_y(ppl, shown["perplexity"])
    acc.set(xlabel="round", ylabel="top-1 (%)", title="top-1 on valid phones (95% noise band)")
    ppl.set(xlabel="round", ylabel="perplexity", title="perplexity on valid phones")
    acc.legend(fontsize=7)
    points = [(r["round"], r["epsilon"]) for r in dp if r.get("epsilon") is not None]
    if points:
        eps.plot(*zip(*points), marker=".", color="tab:red")
    eps.set(xlabel="round", ylabel=f"epsilon against the server (delta = {dp[0]['delta']:g})",
            title="DP fleet: the most any one device spent")
    save_figure(fig, (acc, ppl, eps), title, path)

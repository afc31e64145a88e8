"""The figures of a run: a fleet's valid accuracy, perplexity and epsilon against rounds
(fleet.png), and the demo's two fleets side by side (demo.png)."""
from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_rounds(records: list[dict], path: Path, title: str) -> None:
    """valid top-1 / top-3, valid perplexity and epsilon against rounds, as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (acc, ppl, eps) = plt.subplots(1, 3, figsize=(14, 4))
    evaluated = [r for r in records if r.get("valid")]
    rounds = [r["round"] for r in evaluated]
    for key, label in (("top1", "top-1"), ("top3", "top-3")):
        acc.plot(rounds, [100 * r["valid"][key] for r in evaluated], marker="o", label=label)
    acc.set(xlabel="round", ylabel="accuracy (%)", title="global model on valid")
    acc.legend()
    ppl.plot(rounds, [r["valid"]["perplexity"] for r in evaluated], marker="o", color="tab:green")
    ppl.set(xlabel="round", ylabel="perplexity", title="perplexity on valid")
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
    eps.set(xlabel="round", title="privacy spent (most any device spent)")
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
    for records, label in ((no_dp, "federated, no DP"), (dp, "federated, DP")):
        evaluated = [r for r in records if r.get("valid")]
        rounds = [r["round"] for r in evaluated]
        acc.plot(rounds, [100 * r["valid"]["top1"] for r in evaluated], marker="o", label=label)
        ppl.plot(rounds, [r["valid"]["perplexity"] for r in evaluated], marker="o", label=label)
    acc.set(xlabel="round", ylabel="top-1 (%)", title="top-1 on valid (subset)")
    ppl.set(xlabel="round", ylabel="perplexity", title="perplexity on valid (subset)")
    acc.legend()
    points = [(r["round"], r["epsilon"]) for r in dp if r.get("epsilon") is not None]
    if points:
        eps.plot(*zip(*points), marker=".", color="tab:red")
    eps.set(xlabel="round", ylabel=f"epsilon (delta = {dp[0]['delta']:g})",
            title="privacy spent by the DP fleet (most any device)")
    save_figure(fig, (acc, ppl, eps), title, path)

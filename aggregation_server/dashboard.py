"""The dashboard at `/`: server-rendered HTML with inline SVG charts, no JavaScript at all."""
from __future__ import annotations

import math
import time
from html import escape
from typing import Any

from flask import Blueprint, Response, current_app

from aggregation_server.status import build_status

dashboard = Blueprint("dashboard", __name__)
COLORS = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c")
W, H, PAD_L, PAD_R, PAD_T, PAD_B = 440, 220, 48, 12, 44, 30


def _ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    if not hi - lo > 1e-9 * max(1.0, abs(lo)):  # one value, or values too close to tell apart
        hi = lo + 1.0
    step = 10 ** math.floor(math.log10((hi - lo) / n))
    step *= next(m for m in (1, 2, 2.5, 5, 10) if (hi - lo) / (step * m) <= n)
    start = math.floor(lo / step) * step
    return [start + i * step for i in range(int(math.ceil((hi - start) / step)) + 1)]


def chart(title: str, xs: list[float], series: dict[str, list[float | None]],
          bars: bool = False, hline: tuple[str, float] | None = None) -> str:
    """An SVG line (or bar) chart of one or more series over the same x values."""
    values = [v for ys in series.values() for v in ys if v is not None and math.isfinite(v)]
    if hline:
        values.append(hline[1])
    head = f'<svg class="chart" viewBox="0 0 {W} {H}" width="{W}" height="{H}" ' \
           f'xmlns="http://www.w3.org/2000/svg" role="img"><title>{escape(title)}</title>' \
           f'<rect width="{W}" height="{H}" fill="#fff" stroke="#ddd"/>' \
           f'<text x="{PAD_L}" y="18" font-size="13" font-weight="bold">{escape(title)}</text>'
    if not xs or not values:
        return head + f'<text x="{W / 2}" y="{H / 2}" text-anchor="middle" fill="#888">' \
                      'no data yet</text></svg>'
    ticks = _ticks(min(0.0, min(values)) if bars else min(values), max(values))
    y_lo, y_hi = ticks[0], ticks[-1]
    x_lo, x_hi = min(xs) - (0.5 if bars else 0), max(xs) + (0.5 if bars else 0)
    sx = lambda x: PAD_L + (x - x_lo) / ((x_hi - x_lo) or 1) * (W - PAD_L - PAD_R)  # noqa: E731
    sy = lambda y: H - PAD_B - (y - y_lo) / ((y_hi - y_lo) or 1) * (H - PAD_T - PAD_B)  # noqa: E731
    parts = [head]
    for t in ticks:
        parts.append(f'<line x1="{PAD_L}" x2="{W - PAD_R}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" '
                     f'stroke="#eee"/><text x="{PAD_L - 4}" y="{sy(t) + 4:.1f}" font-size="10" '
                     f'text-anchor="end">{t:g}</text>')
    for x in sorted(set(xs))[:: max(1, len(set(xs)) // 8)]:
        parts.append(f'<text x="{sx(x):.1f}" y="{H - 12}" font-size="10" '
                     f'text-anchor="middle">{x:g}</text>')
    width = max(2.0, (W - PAD_L - PAD_R) / max(len(xs), 1) / max(len(series), 1) * 0.8)
    for i, (name, ys) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        points = [(sx(x), sy(y)) for x, y in zip(xs, ys) if y is not None]
        if bars:
            parts += [f'<rect x="{px - width * (len(series) / 2 - i):.1f}" y="{py:.1f}" '
                      f'width="{width:.1f}" height="{max(sy(y_lo) - py, 0):.1f}" fill="{color}"/>'
                      for px, py in points]
        else:
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" '
                         'stroke-width="2"/>')
            parts += [f'<circle cx="{px:.1f}" cy="{py:.1f}" r="2.5" fill="{color}"/>'
                      for px, py in points]
        parts.append(f'<text x="{PAD_L + 120 * i}" y="34" font-size="11" '
                     f'fill="{color}">■ {escape(name)}</text>')
    if hline:
        parts.append(f'<line x1="{PAD_L}" x2="{W - PAD_R}" y1="{sy(hline[1]):.1f}" '
                     f'y2="{sy(hline[1]):.1f}" stroke="#dc2626" stroke-dasharray="5,4"/>'
                     f'<text x="{W - PAD_R}" y="{sy(hline[1]) - 4:.1f}" font-size="10" '
                     f'text-anchor="end" fill="#dc2626">{escape(hline[0])}</text>')
    return "".join(parts) + "</svg>"


def charts(st: dict[str, Any]) -> list[str]:
    """The dashboard's charts from a status document."""
    rounds = st["rounds"]
    ids = [r["id"] for r in rounds]
    out = [chart("Participants per round", ids, {
        "reports": [r["reports"] for r in rounds],
        "tasks handed out": [r["tasks_issued"] for r in rounds]}, bars=True)]
    closed = [r for r in rounds if r["state"] == "closed" and r.get("kind") != "evaluate"]
    names = sorted({k for r in closed for k in r["metrics"]} - {"reports", "num_examples"})
    for name in names[:4]:
        out.append(chart(f"{name} (devices' mean, per round)", [r["id"] for r in closed],
                         {name: [r["metrics"].get(name) for r in closed]}))
    quality = st["evaluation"]["quality"]
    if quality:
        pick = lambda name, key: [100 * q[name][key] if q[name] else None  # noqa: E731
                                  for q in quality]
        out.append(chart("Top-1 on devices (%) by model version, 95% noise interval",
                         [q["model_version"] for q in quality],
                         {"top-1": pick("top1", "value"), "low": pick("top1", "ci_low"),
                          "high": pick("top1", "ci_high")}))
    budget = st["privacy"]["epsilon_budget"]
    ended = [r for r in rounds if r["state"] in ("closed", "abandoned")]
    out.append(chart("Epsilon spent (most spent by one device)", [r["id"] for r in ended],
                     {"against the server": [r["epsilon_max"] for r in ended],
                      "against model users": [r.get("epsilon_max_model_users")
                                              for r in ended]},
                     hline=("budget", budget) if budget else None))
    versions = st["versions"]
    start = versions[0]["created_at"] if versions else 0.0
    out.append(chart("Model versions over time (minutes)",
                     [round((v["created_at"] - start) / 60, 2) for v in versions],
                     {"version": [v["version"] for v in versions]}))
    return out


def _table(rounds: list[dict]) -> str:
    rows = "".join(
        f"<tr><td>{r['id']}</td><td>{'evaluation' if r.get('kind') == 'evaluate' else 'training'}"
        f"</td><td class='{r['state']}'>{r['state']}</td>"
        f"<td>{r['reports']}/{r['target']} (min {r['minimum']})</td><td>{r['tasks_issued']}</td>"
        f"<td>{'' if r['new_version'] is None else r['new_version']}</td>"
        f"<td>{'yes' if r.get('secure_aggregation') else 'no'}</td>"
        f"<td>{escape(r['reason'] or '')}</td></tr>" for r in reversed(rounds[-15:]))
    return ("<table><tr><th>round</th><th>kind</th><th>state</th><th>reports</th><th>tasks</th>"
            f"<th>new version</th><th>secure aggregation</th><th>reason</th></tr>{rows}</table>")


def _privacy_table(p: dict) -> str:
    """Both epsilons, labelled: spent so far by the most-charged device, and at the cap."""
    rows = "".join(f"<tr><td>{escape(f['label'])}</td><td>{escape(f['spent_text'])}</td>"
                   f"<td>{escape(f['at_cap_text'])}</td></tr>" for f in p["figures"])
    return ("<table><tr><th>privacy</th><th>most spent by one device</th>"
            f"<th>a device at the participation cap of {p['participation_cap']} rounds</th>"
            f"</tr>{rows}</table>")


CAUSE_WORDS = {"device_aborts": "devices saw an inconsistent view and aborted",
               "dropouts": "too many devices dropped out",
               "sum_out_of_range": "the unmasked sum was out of range (a tampered device)",
               "other": "stopped, or no protocol result"}


def _secure_outcomes(sa: dict[str, Any]) -> str:
    """How many secure rounds were abandoned and why, and the devices' abort reasons."""
    causes = "".join(f"<li>{n} because {escape(CAUSE_WORDS.get(c, c))}</li>"
                     for c, n in sa["abandoned_by_cause"].items() if n)
    aborts = "".join(f"<li>{n} times: {escape(sa['abort_reasons'].get(c, c))} ({escape(c)})</li>"
                     for c, n in sa["device_aborts"].items() if n)
    return (f"<h2>Secure aggregation</h2><p>{sa['abandoned']} of {sa['rounds']} secure rounds "
            f"abandoned.</p><ul>{causes}</ul><p>Devices that left a round because what they "
            f"were relayed was inconsistent: {sum(sa['device_aborts'].values())}.</p>"
            f"<ul>{aborts}</ul>")


def _estimate(e: dict | None, percent: bool = True) -> str:
    """A figure with its 95% noise interval, in words when the noise hides it."""
    if e is None:
        return "too few words for the noise"
    if percent:
        return f"{e['value']:.1%} ({e['ci_low']:.1%} to {e['ci_high']:.1%})"
    return f"{e['value']:.1f} ({e['ci_low']:.1f} to {e['ci_high']:.1f})"


def _latest_quality(latest: dict | None) -> str:
    if latest is None:
        return "not evaluated yet"
    return f"{_estimate(latest['top1'])}, version {latest['model_version']}"


def _evaluation(ev: dict[str, Any]) -> str:
    """Quality against model version and each evaluation round's reports."""
    if not ev["rounds"]:
        return ("<h2>Quality on devices (federated evaluation)</h2><p>No evaluation round "
                "yet: set evaluate_every in the round config to have devices score the "
                "model on their own recent messages.</p>")
    rows = []
    for e in reversed(ev["rounds"][-15:]):
        result = e["result"]
        if result is None:
            rows.append(f"<tr><td>{e['round_id']}</td><td>{e['model_version']}</td>"
                        f"<td>{e['reports']} (min {e['minimum']})</td><td colspan='5'>"
                        f"{escape(e['state'])}{': ' + escape(e['reason']) if e['reason'] else ''}"
                        "</td></tr>")
            continue
        for i, v in enumerate(result["versions"]):
            f = v["figures"]
            diff = result["top1_difference"] if i == 0 else None
            paired = ("" if i or len(result["versions"]) < 2 else "not enough words"
                      if diff is None else f"{diff['value'] * 100:+.2f} points "
                      f"({diff['ci_low'] * 100:+.2f} to {diff['ci_high'] * 100:+.2f})")
            rows.append(f"<tr><td>{e['round_id'] if i == 0 else ''}</td><td>{v['version']}</td>"
                        f"<td>{result['reports'] if i == 0 else ''}</td>"
                        f"<td>{_estimate(f['top1'])}</td><td>{_estimate(f['top3'])}</td>"
                        f"<td>{_estimate(f['ksr'])}</td>"
                        f"<td>{_estimate(f['perplexity'], percent=False)}</td>"
                        f"<td>{paired}</td></tr>")
    return ("<h2>Quality on devices (federated evaluation)</h2><p>Devices score the model on "
            "their most recent messages not yet used for training and send only noised sums; "
            "each figure comes with the 95% interval its noise allows.</p><table><tr>"
            "<th>round</th><th>model version</th><th>reports</th><th>top-1</th><th>top-3</th>"
            "<th>keystrokes saved</th><th>perplexity</th><th>top-1 against the previous "
            f"version</th></tr>{''.join(rows)}</table>")


STYLE = """body{font-family:sans-serif;margin:24px;color:#222;background:#f7f7f8}
.grid{display:flex;flex-wrap:wrap;gap:12px}.cards{display:flex;gap:12px;flex-wrap:wrap}
.card{background:#fff;border:1px solid #ddd;padding:10px 16px;border-radius:6px}
.card b{display:block;font-size:22px}table{border-collapse:collapse;background:#fff;margin-top:12px}
td,th{border:1px solid #ddd;padding:4px 8px;font-size:13px;text-align:left}
.closed{color:#16a34a}.abandoned{color:#dc2626}.open{color:#2563eb}.warn{color:#dc2626}
li{font-size:13px}"""


@dashboard.get("/")
def page() -> Response:
    st = build_status(current_app.extensions["pk.service"])
    r, p = st["round"], st["privacy"]
    server, users = p["figures"]
    cards = [("training", st["training"]),
             ("round", f"{r['id']} {r['state']}" if r else "none"),
             ("secure aggregation", ("on" if r["secure_aggregation"] else "off") if r else "-"),
             ("reports", f"{r['reports']}/{r['target']}" if r else "-"),
             ("model version", st["model"]["version"]),
             ("devices enrolled", st["devices"]["enrolled"]),
             ("participants", st["devices"]["participants"]),
             ("privacy spent, against the server", server["spent_text"]),
             ("privacy spent, against model users", users["spent_text"]),
             ("epsilon budget (against the server)",
              "none set" if p["epsilon_budget"] is None else f"{p['epsilon_budget']:g}"),
             ("secure rounds abandoned", st["secure_aggregation"]["abandoned"]),
             ("top-1 on devices", _latest_quality(st["evaluation"]["latest"]))]
    blocked = (f"<p class='warn'>No round can start: {escape(st['blocked_reason'])}</p>"
               if st["blocked_reason"] else "")
    stuck = r and r.get("aggregation")
    if stuck:
        at = time.strftime('%H:%M:%S UTC', time.gmtime(stuck["next_attempt_at"]))
        blocked += (f"<p class='warn'>Round {r['id']} is not aggregated yet: attempt "
                    f"{stuck['attempts']} failed with {escape(stuck['last_error'])}; the next "
                    f"attempt is at {at} (the round's updates are kept).</p>")
    html = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="10"><title>Aggregation server</title>
<style>{STYLE}</style></head><body><h1>Federated training</h1>
<div class="cards">{"".join(f'<div class="card">{escape(k)}<b>{escape(str(v))}</b></div>'
                            for k, v in cards)}</div>
<p class="budget">Privacy budget: {escape(p["budget_text"])}</p>{blocked}
<h2>Charts</h2><div class="grid">{"".join(charts(st))}</div>
{_evaluation(st["evaluation"])}
<h2>Recent rounds</h2>{_table(st["rounds"])}
{_secure_outcomes(st["secure_aggregation"])}
<h2>Privacy accounting</h2>{_privacy_table(p)}<p>Assumptions:</p>
<ul>{"".join(f"<li>{escape(a)}</li>" for a in p["assumptions"])}</ul>
<p><small>Updated {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(st['time']))};
JSON at <a href="/v1/status">/v1/status</a>, metrics at <a href="/metrics">/metrics</a>,
API at <a href="/v1/openapi.json">/v1/openapi.json</a>.</small></p></body></html>"""
    return Response(html, mimetype="text/html")

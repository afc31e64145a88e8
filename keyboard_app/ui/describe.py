"""Plain-language text for the status line and the privacy panel (pure Python, no Kivy)."""
from __future__ import annotations

import time

NO_MODEL = ("The word model could not be loaded, so there are no suggestions yet. You can "
            "still type. Reinstalling the app restores it; with a server set in Settings, "
            "the keyboard downloads one.")
# what the learning loop is doing, in plain words (runtime states)
DOING = {"training": "learning from your messages on this device",
         "uploading": "sending an update", "uploaded": "update sent",
         "paused": "paused", "not-eligible": "waiting until the phone is idle and charging",
         "no-task": "waiting for the next training round",
         "offline": "the server cannot be reached; trying again later",
         "interrupted": "stopped because the phone was in use; it will try again",
         "missed": "a round ended before this phone was done; it will join a later one",
         "rejected": "the server did not accept the last update; it will try again",
         "refused": "a round was refused to protect your privacy (see Privacy)",
         "budget-spent": "your privacy limit is reached, so training has stopped",
         "error": "something went wrong; it will try again", "starting": "starting",
         "stopped": "stopped"}


def _esc(text: str) -> str:
    """Kivy markup escaping, so that a URL or an error shows literally."""
    return text.replace("&", "&amp;").replace("[", "&bl;").replace("]", "&br;")


def when(ts: float | None, now: float | None = None) -> str:
    """'27 Nov 2026 15:20 (3 min ago)' for a unix time."""
    if ts is None:
        return "never"
    ago = max(0.0, (now or time.time()) - ts)
    if ago < 90:
        rel = f"{ago:.0f} s ago"
    elif ago < 5400:
        rel = f"{ago / 60:.0f} min ago"
    elif ago < 2 * 86400:
        rel = f"{ago / 3600:.0f} h ago"
    else:
        rel = f"{ago / 86400:.0f} days ago"
    return time.strftime("%d %b %Y %H:%M", time.localtime(ts)) + f" ({rel})"


def size(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n} bytes" if n < 1000 else f"{n / 1000:.1f} kB" if n < 10**6 else f"{n / 1e6:.2f} MB"


def model_text(version: int | None, source: str) -> str:
    if source == "none":
        return "no model"
    named = f"model v{version}" if version is not None else "model"
    return f"{named} ({'pre-trained on public data' if source == 'pretrained' else 'global'})"


def status_line(server_url: str, runtime: dict | None, version: int | None, source: str,
                loading: bool, problem: str = "") -> tuple[str, str]:
    """(text, level) for the line under the title bar; level is ok/info/warn/error."""
    if loading:
        return "Loading the model...", "info"
    if source == "none":  # `problem` is for the log: file names and errors are no help here
        return NO_MODEL + (" Waiting for the server..." if server_url else ""), "error"
    model = model_text(version, source)
    if not server_url:
        if source == "pretrained":
            named = f"model v{version}" if version is not None else "model"
            return (f"Offline (no server set): suggestions from the pre-trained {named} "
                    "(public data only)."), "info"
        return f"Offline (no server set): suggestions from the cached {model}.", "info"
    reachable = (runtime or {}).get("server_reachable")
    if reachable is False:
        return f"Server unreachable: using the cached {model}; retrying in the background.", "warn"
    if reachable is None:
        return f"Connecting to {_esc(server_url)}... using the cached {model}.", "info"
    state = (runtime or {}).get("state", "")
    doing = DOING.get(state, "")
    return f"Connected: {model}" + (f", {doing}." if doing else "."), "ok"


def privacy_lines(stats: dict, runtime: dict | None, *, version: int | None, source: str,
                  server_url: str, participate: bool, user_paused: bool,
                  incognito: bool, ledger: dict | None = None,
                  now: float | None = None) -> dict[str, str]:
    """The privacy panel's paragraphs, keyed by section line (`ledger`: Backend.ledger_view)."""
    n = stats.get("messages", 0)
    stored = (f"[b]{n} message{'s' if n != 1 else ''}[/b] stored, the oldest from "
              f"{when(stats.get('oldest'), now)}." if n else "[b]0 messages[/b] stored.")
    f = stats.get("filters", {})
    never = ["password fields", "incognito mode"]
    if f.get("digits"):
        never.append(f"numbers of {f.get('min_digits', 7)}+ digits, card and bank account "
                     "numbers")
    if f.get("emails"):
        never.append("e-mail addresses")
    kept_out = sum((stats.get("not_stored") or {}).values()) + stats.get("redacted", 0)
    days, cap = stats.get("retention_days"), stats.get("max_messages")
    kept = " ".join([
        (f"Kept {days:g} days" if days else "Kept without time limit")
        + (f", at most {cap:,} messages" if cap else "") + ", only on this device.",
        f"Never stored: {', '.join(never)}.",
        f"Kept out or redacted so far: {kept_out}.",
        "Incognito is on." if incognito else ""]).strip()
    rt = runtime or {}
    if rt.get("last_participation"):
        participation = (f"Last took part: round {rt.get('last_round_id')}, "
                         f"{when(rt['last_participation'], now)}; "
                         f"{rt.get('rounds_joined', 0)} round(s) in all.")
        secure = rt.get("secure_aggregation", (rt.get("extra") or {}).get("secure_aggregation"))
        secure_text = "yes" if secure else "no" if secure is False else "not reported"
        update = (f"Sent: one update of {size(rt.get('last_update_bytes'))}: how the model "
                  f"should change, never your text. Before it left this phone, its size was "
                  f"capped (at {rt.get('clip_norm'):g}) and random noise was added (of "
                  f"strength {rt.get('noise_stddev'):g}), so that it says very little about "
                  f"any one message. Mixed with other phones' updates so that the server sees "
                  f"only their sum: {secure_text}.")
    else:
        participation = "Has not taken part in a training round yet."
        update = ("Sent: nothing but requests for the model and for tasks." if server_url
                  else "Sent: nothing (no server).")
    if not server_url:
        learning = "Training: off (no server set in Settings)."
    elif not participate:
        learning = "Training: off (Settings: take part in training is off)."
    elif user_paused:
        learning = "Training: paused by you."
    else:
        state = rt.get("state") or ""
        doing = DOING.get(state, "")
        learning = ("Training: on, only while idle, charging and on an unmetered network. "
                    + (f"Now: {doing}." if doing else ""))
    model = f"In use: {model_text(version, source)}" + \
            (f" from {_esc(server_url)}." if source == "global" else ".")
    eps = rt.get("epsilon")
    if eps is None:
        epsilon = "Privacy budget: the server has not reported epsilon yet."
    else:
        budget = f", of a budget of {rt['epsilon_budget']:g}" if rt.get("epsilon_budget") else ""
        delta = f" (delta {rt['delta']:g})" if rt.get("delta") else ""
        epsilon = (f"The server's own accounting: at most epsilon {eps:.2f} spent by any "
                   f"device{budget}{delta}.")
    return {"stored": stored, "kept": kept, "participation": participation, "update": update,
            "learning": learning, "model": model, "epsilon": epsilon,
            **ledger_lines(ledger, now)}


def ledger_lines(ledger: dict | None, now: float | None = None) -> dict[str, str]:
    """The device's own ledger and privacy limits, in plain words with the numbers."""
    if ledger is None:
        return {"ledger": "Privacy ledger: opening...", "ledger_seen": "", "policy": "",
                "refusal": ""}
    n, limit = ledger["rounds"], ledger["limit"]
    limit_text = f"your limit {limit:g}" if limit else "no limit (a simulation's setting)"
    joined = (f"Your phone has contributed to {n} round{'s' if n != 1 else ''}." if n else
              "Your phone has not contributed to any round yet.")
    spent = (f"{joined} Privacy spent: ε = {ledger['epsilon']:.1f} of {limit_text} "
             f"(δ = {ledger['delta']:g}).")
    unanswered = ledger["sent"] - n
    if unanswered > 0:
        spent += (f" {unanswered} more update{'s' if unanswered != 1 else ''} left the phone "
                  "without the server confirming; counted all the same.")
    alone = ledger.get("epsilon_alone")
    if alone is not None and alone > ledger["epsilon"] + 0.05:
        spent += (f" If every other phone in those rounds had been fake (adding no noise), it "
                  f"would be ε = {alone:.1f}.")
    if ledger["exhausted"]:
        spent += " The limit is reached: your phone no longer takes part in training."
    seen = (f"Last round, {when(ledger['last_ts'], now)}: the server could see "
            f"{ledger['last_seen']}." if ledger["last_seen"] else "")
    p = ledger["policy"]
    secure = ("secure aggregation required" if p["require_secure_aggregation"] else
              "without secure aggregation, your phone adds all of the round's noise itself")
    policy = (f"Your limits: noise of at least {p['min_noise_multiplier']:g} times the "
              f"clipping norm, each phone's update clipped to at most "
              f"{p['max_clip_norm']:g}, at least {p['min_reports']} phones a round, {secure}, "
              f"noise enough even if {_share(p['dishonest_share'])} of the phones in a round "
              f"are fake. "
              + ("Set in code for a simulation or test." if ledger["relaxed"] else
                 "The server cannot loosen them; you can make them stricter in Settings.")
              + " Deleting your typing history does not reset this ledger: privacy spent "
                "stays spent.")
    r = ledger["refusal"]
    refusal = (f"Last refused: round {r['round_id']}, {when(r['ts'], now)}. {r['reason']}"
               if r else "No round has been refused.")
    return {"ledger": spent, "ledger_seen": _esc(seen), "policy": policy,
            "refusal": _esc(refusal)}


def _share(share: float) -> str:
    """A share of phones in words ("1 in 3"), or a percentage when it is no simple one."""
    for n in range(2, 11):
        if abs(share * n - round(share * n)) < 1e-9 and round(share * n) >= 1:
            return f"{round(share * n)} in {n}"
    return "none" if share == 0 else f"{share:.0%}"


STORED_NOTES = {
    "stored": "stored on this device for learning",
    "stored-redacted": "stored, with a number or address cut out",
    "password-field": "password field: not stored",
    "incognito": "incognito: not stored",
    "contains-long-number": "not stored: contains a long number",
    "contains-card-number": "not stored: contains a card number",
    "contains-bank-account": "not stored: contains a bank account number",
    "contains-email": "not stored: contains an e-mail address",
    "empty": "not stored: nothing left after filtering",
}


def stored_note(reason: str | None) -> str:
    """The small line under a sent message saying what the history store did with it."""
    return STORED_NOTES.get(reason or "", f"not stored ({reason})")

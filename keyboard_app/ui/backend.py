"""What the UI needs besides drawing: the history store, the predictor and the device runtime.

Plain Python, no Kivy. The App calls `open()` in a background thread (it reads models from
disk); every later model comes from the runtime's thread through `on_model`, which the App
hands over to the Kivy clock. Suggestions and history writes happen on the UI thread.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from typing import TYPE_CHECKING

from keyboard_app.history import HistoryStore
from keyboard_app.personal_store import FILE_NAME as PERSONAL_FILE, PersonalStore
from keyboard_app.ui.prefs import Prefs
from model import paths

if TYPE_CHECKING:  # imported by open(), off the UI thread, so the window shows first
    from device_model.lstm import NumpyLSTM
    from device_model.tokenizer import DeviceTokenizer
    from keyboard_app.ledger import PrivacyLedger
    from keyboard_app.privacy_policy import DevicePolicy
    from keyboard_app.runtime import DeviceRuntime
    from model.predictor import Predictor

log = logging.getLogger("keyboard_app.ui")
HISTORY_FILE = "history.sqlite"  # the file name DeviceRuntime uses by default


@dataclass
class ModelReady:
    """A predictor to install on the UI thread, and where its model came from."""

    predictor: Predictor | None
    version: int | None
    source: str  # "global" (server or its cache) | "pretrained" | "none"
    problem: str = ""  # why there is no model, or why the pretrained one was unusable


OnModel = Callable[[ModelReady], None]


class Backend:
    """The history, the current predictor and (with a server URL) the device runtime."""

    def __init__(self, data_dir: str | Path, prefs: Prefs, *,
                 pretrained_model: str | Path | None = None,
                 tokenizer_path: str | Path | None = None,
                 runtime_options: dict | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.prefs = prefs
        # the public pre-trained model shipped in the package, unless told otherwise
        self.pretrained_model = Path(pretrained_model or paths.SHIPPED_MODEL)
        self.tokenizer_path = Path(tokenizer_path or paths.SHIPPED_TOKENIZER)
        self.runtime_options = runtime_options or {}
        self.history = HistoryStore(self.data_dir / HISTORY_FILE,
                                    retention_days=prefs.retention_days, filters=prefs.filters())
        self.personal = PersonalStore(self.data_dir / PERSONAL_FILE,
                                      retention_days=prefs.retention_days,
                                      clock=self.history.clock)
        self.runtime: DeviceRuntime | None = None
        self.ledger: PrivacyLedger | None = None  # opened by open(), off the UI thread
        self._ledger_view: tuple[tuple, dict] | None = None
        self.user_paused = False

    # --- models ---------------------------------------------------------------------
    def open(self, on_model: OnModel) -> None:
        """Blocking (call it off the UI thread): load the best model there is, start syncing."""
        from keyboard_app.ledger import FILE_NAME, PrivacyLedger
        from keyboard_app.runtime import DeviceRuntime
        from model.predictor import Predictor
        got_global = False
        self.ledger = self.ledger or PrivacyLedger(self.data_dir / FILE_NAME)
        self.ledger_view()  # the first epsilon imports dp-accounting: here, not on the UI

        def from_runtime(model: NumpyLSTM, tokenizer: DeviceTokenizer, version: int) -> None:
            nonlocal got_global
            got_global = True
            predictor = Predictor.for_keyboard(model, tokenizer)
            on_model(ModelReady(self.personalise(predictor), version, "global"))

        if self.prefs.server_url:
            options = {"enrolment_code": self.prefs.enrolment_code or None,
                       **self.runtime_options, "policy": self.policy(), "ledger": self.ledger}
            self.runtime = DeviceRuntime(self.data_dir, self.prefs.server_url,
                                         history=self.history, **options)
            self._apply_pause()
            self.runtime.add_model_listener(from_runtime)  # calls back now if one is cached
        if not got_global:
            on_model(self.load_pretrained())
        if self.runtime:
            self.runtime.start()

    def load_pretrained(self) -> ModelReady:
        """The public pre-trained model from the cache (on the NumPy runtime), or why there is
        none."""
        from device_model.checkpoint import CheckpointError, load_weights
        from device_model.lstm import NumpyLSTM
        from device_model.tokenizer import DeviceTokenizer, TokenizerError
        from model.predictor import Predictor
        if not self.pretrained_model.is_file() or not self.tokenizer_path.is_file():
            return ModelReady(None, None, "none", "no pre-trained model in "
                              f"{self.pretrained_model.parent}")
        try:
            tokenizer = DeviceTokenizer.load(self.tokenizer_path)
            weights, meta = load_weights(self.pretrained_model, tokenizer.sha256)
        except (CheckpointError, TokenizerError) as err:
            log.warning("pre-trained model unusable: %s", err)
            return ModelReady(None, None, "none", str(err))
        predictor = Predictor.for_keyboard(NumpyLSTM(weights, meta.config), tokenizer)
        return ModelReady(self.personalise(predictor), meta.version, "pretrained")

    def close(self) -> None:
        """Stop the runtime (waits for training to stop at its next batch)."""
        if self.runtime:
            self.runtime.stop()
        self.history.close()
        self.personal.close()

    # --- the personal layer -------------------------------------------------------------
    def personalise(self, predictor: Predictor) -> Predictor:
        """Mix the person's learned words into a new predictor's suggestions."""
        predictor.set_personal(self.personal.model)
        return predictor

    def learn_personal(self, text: str, predictor: Predictor | None) -> None:
        """Learn a sent message the history kept (already filtered), unless paused."""
        if self.personal.paused:
            return
        layer = predictor.personal if predictor is not None else None
        if layer is not None and layer.model is self.personal.model:
            self.personal.record(predictor.learn(text))  # arrays updated in place
        else:
            self.personal.learn(text)

    # --- learning ---------------------------------------------------------------------
    def note_typing(self) -> None:
        runtime = self.runtime  # read once: a reconnect may swap it from another thread
        if runtime:
            runtime.note_typing()

    def set_paused(self, paused: bool) -> None:
        self.user_paused = paused
        self._apply_pause()

    def _apply_pause(self) -> None:
        runtime = self.runtime
        if runtime is None:
            return
        if self.user_paused or not self.prefs.participate:
            runtime.pause()
        else:
            runtime.resume()

    def policy(self) -> DevicePolicy:
        """The device privacy policy: the user's settings (or one a test set in code)."""
        return self.runtime_options.get("policy") or self.prefs.policy()

    def ledger_view(self) -> dict | None:
        """The privacy ledger and policy for the panel (None until open() opened it);
        recomputed only when the ledger or the policy changed."""
        ledger, policy = self.ledger, self.policy()
        if ledger is None:
            return None
        key = (ledger.revision(), policy)
        if self._ledger_view is None or self._ledger_view[0] != key:
            from federated.privacy import composed_epsilon
            summary = ledger.summary(policy.delta)
            limit = policy.epsilon_budget
            next_round = composed_epsilon([*ledger.multipliers(), policy.min_noise_multiplier],
                                          policy.delta) if limit else 0.0
            last = summary["last"]
            refusals = ledger.refusals(1)
            self._ledger_view = (key, {
                "rounds": summary["rounds"], "sent": summary["sent"],
                "epsilon": summary["epsilon"], "epsilon_alone": summary["epsilon_alone"],
                "limit": limit, "delta": policy.delta,
                "exhausted": bool(limit) and next_round > limit,
                "last_seen": last.seen if last else None, "last_ts": last.ts if last else None,
                "refusal": refusals[0] if refusals else None,
                "policy": policy.settings(), "relaxed": policy.explicitly_relaxed})
        return self._ledger_view[1]

    def runtime_status(self) -> dict | None:
        """The runtime's status as a dict, or None without a server."""
        runtime = self.runtime
        return asdict(runtime.status()) if runtime else None

    # --- settings ------------------------------------------------------------------------
    def apply_prefs(self, prefs: Prefs) -> bool:
        """Use new settings now; True when the server URL changed (call `restart` off the UI
        thread then)."""
        changed_server = prefs.server_url != self.prefs.server_url
        if self.runtime and prefs.enrolment_code != self.prefs.enrolment_code:
            self.runtime.client.enrolment_code = prefs.enrolment_code or None
        self.prefs = prefs
        self.history.retention_days = prefs.retention_days
        self.history.filters = prefs.filters()
        runtime = self.runtime
        if runtime is not None:
            runtime.set_policy(self.policy())
        self._apply_pause()
        return changed_server

    def restart(self, on_model: OnModel) -> None:
        """Blocking: stop the runtime and open again with the current server URL."""
        if self.runtime:
            self.runtime.stop()
            self.runtime = None
        self.open(on_model)

"""The serving model: loaded at start-up (falling back to the newest promoted version that
loads), then CURRENT watched in a background thread, new versions loaded and smoke-tested
there and handed to the loop, which swaps them in between batches."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from consumer.serve.metrics import Metrics
from consumer.serve.scoring import ModelRefused, ModelRunner
from consumer.settings import ModelSettings
from training.registry import Registry, resolve_model_dir

log = logging.getLogger(__name__)

REFUSED_RETRY_S = 300.0  # a refused model version is tried again after this long


class ModelWatcher:
    """Polls the registry's CURRENT; loads and smoke-tests a new version in a background thread.

    A version that fails to load is refused and the serving one kept; it is tried again after
    REFUSED_RETRY_S (a failure may have been passing: memory, a network file system). At
    start-up a CURRENT that does not load falls back to the newest promoted version that does.
    """

    def __init__(self, registry: Registry, metrics: Metrics, model: ModelSettings) -> None:
        self.registry = registry
        self.metrics = metrics
        self.model = model
        # the records the state keeps per customer: a model that needs more is refused while
        # serving (its windows would be cut short); set once the store exists
        self.window_limit: int | None = None
        self._ready: ModelRunner | None = None
        self._lock = threading.Lock()
        self._refused: dict[str, float] = {}  # version -> when it was refused (monotonic)
        self._seen: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def load_current(self) -> ModelRunner:
        """Blocking first load at start-up: CURRENT, or, when it does not load, the newest
        version promoted before it that does (counted as reloads{result="fallback"})."""
        path = resolve_model_dir(self.registry.root)
        try:
            runner = self._load(path)
        except ModelRefused as refusal:
            if path.parent.resolve() != self.registry.root.resolve():
                raise  # a version directory named directly: nothing to fall back to
            runner = self._fall_back_from(path.name, refusal)
        self._seen = runner.version
        self.metrics.reloads.labels("loaded").inc()
        return runner

    def _fall_back_from(self, current: str, refusal: ModelRefused) -> ModelRunner:
        self._refuse(current, refusal)
        for version in reversed(self.registry.promotion_stack()):
            if version in self._refused or version not in self.registry.versions():
                continue
            try:
                runner = self._load(self.registry.path(version))
            except ModelRefused as exc:
                self._refuse(version, exc)
                continue
            self.metrics.reloads.labels("fallback").inc()
            log.error("CURRENT (%s) does not load: serving %s, the newest promoted version that does", current,
                      version)
            return runner
        raise ModelRefused(f"CURRENT ({current}) does not load and no version promoted before it does: {refusal}")

    def _load(self, path: Path) -> ModelRunner:
        runner = ModelRunner(path, self.model.jit_compile, self.model.threads)
        if self.window_limit is not None and runner.spec.window > self.window_limit:
            raise ModelRefused(
                f"{runner.version}: its window ({runner.spec.window}) is longer than the {self.window_limit} "
                "records per customer this scorer keeps; restart the scorers to serve it (after `seqscore state "
                "rebuild`, which fills the longer windows from the events topic)"
            )
        return runner

    def _refuse(self, version: str, exc: Exception) -> None:
        self._refused[version] = time.monotonic()
        self.metrics.reloads.labels("refused").inc()
        log.error("model %s refused, keeping the serving model: %s", version, exc)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._watch, name="seqscore-model-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def take(self) -> ModelRunner | None:
        """The newly loaded model, once, if there is one."""
        with self._lock:
            runner, self._ready = self._ready, None
        return runner

    def _watch(self) -> None:
        while not self._stop.wait(self.model.poll_seconds):
            self.poll_once()

    def poll_once(self) -> None:
        """Load CURRENT when it changed. Nothing raised here may end the watch: a registry that
        cannot be read for a while (EACCES, ESTALE, a CURRENT that is not text) is logged and
        counted, and read again at the next poll."""
        try:
            current = self.registry.current()
        except (OSError, ValueError) as exc:
            self.metrics.reloads.labels("unreadable").inc()
            log.warning("cannot read the registry's CURRENT (%s): keeping the serving model", exc)
            return
        if current is None or current == self._seen:
            return
        refused_at = self._refused.get(current)
        if refused_at is not None and time.monotonic() - refused_at < REFUSED_RETRY_S:
            return
        try:
            runner = self._load(self.registry.path(current))
        except Exception as exc:  # any failure (ModelRefused or other) refuses the version, never the scorer
            self._refuse(current, exc)
            return
        self._refused.pop(current, None)
        self._seen = current
        with self._lock:
            self._ready = runner

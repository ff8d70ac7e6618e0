"""The model version in service, and the output policies that come with it.

A version's manifest carries its alert thresholds; settings override them. A new version,
loaded and smoke-tested in the background by the watcher, is swapped in between batches."""

from __future__ import annotations

import gc
import logging

from consumer.segments.page import PageContext
from consumer.serve.health import HealthState
from consumer.serve.metrics import Metrics
from consumer.serve.model_watch import ModelWatcher
from consumer.serve.outputs import Policies
from consumer.serve.policy import AlertPolicy, NextActionPolicy
from consumer.serve.scoring import ModelRunner
from consumer.settings import OutputSettings
from state.encoding import activity_codes

log = logging.getLogger(__name__)


def settle_heap() -> None:
    """Put what is alive now (the libraries, the model) out of the cyclic collector's reach.
    A full collection walks every tracked object: with TensorFlow and a model loaded, 180-230
    ms, and the stream's own objects start one now and then (once in 30 s at 5,700 events/s);
    a stall that long at a rate near capacity builds a backlog that takes seconds to work
    off. Frozen, a full collection took 1 ms. Frozen objects are still freed by reference
    counting; what the previous model left in cycles is collected here first, at each swap."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def policies_for(runner: ModelRunner, outputs: OutputSettings) -> Policies:
    """The alert and next-action policies for this model: settings win over its manifest."""
    alert = AlertPolicy(
        outputs.churn_alert_threshold if outputs.churn_alert_threshold is not None else runner.alert_threshold,
        outputs.churn_recovery_threshold
        if outputs.churn_recovery_threshold is not None
        else runner.recovery_threshold,
        outputs.churn_cooldown_seconds,
    )
    next_action = NextActionPolicy(
        outputs.top_k,
        outputs.next_action_min_probability,
        outputs.next_action_min_interval_seconds,
        outputs.next_action_quiet_after_alert_seconds,
    )
    vocabulary = tuple(runner.spec.vocabulary)
    return Policies(alert, next_action, vocabulary, activity_codes(list(vocabulary)), runner.version, outputs.top_k)


class ServingModel:
    """The runner and policies the next batch is scored with."""

    def __init__(self, watcher: ModelWatcher, outputs: OutputSettings, metrics: Metrics, health: HealthState) -> None:
        self.watcher = watcher
        self.outputs = outputs
        self.metrics = metrics
        self.health = health
        self.runner: ModelRunner | None = None
        self.policies: Policies | None = None

    def serve(self, runner: ModelRunner) -> None:
        self.runner = runner
        self.policies = policies_for(runner, self.outputs)
        self.metrics.model_info.clear()
        self.metrics.model_info.labels(runner.version).set(1)
        self.health.model_version = runner.version
        settle_heap()
        log.info("serving model %s (%s; %s)", runner.version, self.policies.alerts.name,
                 self.policies.next_actions.name)

    def swap_if_new(self) -> None:
        """Between batches: serve the version the watcher has loaded since, if any."""
        swapped = self.watcher.take()
        if swapped is not None:
            self.serve(swapped)
            self.metrics.reloads.labels("loaded").inc()

    def page_context(self) -> PageContext | None:
        """What /segments needs of the model; None until one is loaded."""
        if self.runner is None or self.policies is None:
            return None
        return PageContext(self.policies.vocabulary, self.policies.alerts.alert_threshold, self.runner.version)

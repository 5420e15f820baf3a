"""What a run did, stage by stage (`phi3_pipeline.stages.Stage`), read by the failure path as facts (a candidate
was deployed, traffic moved) rather than labels."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from phi3_pipeline.stages import Stage


@dataclass
class StageRecord:
    stage: Stage
    outcome: str
    seconds: float
    detail: str = ""


@dataclass
class StageSummary:
    """Runs each stage's task, timing it and noting whether it created, reused or was cached."""

    records: list[StageRecord] = field(default_factory=list)
    results: dict[Stage, object] = field(default_factory=dict)

    def run(self, stage: Stage, task, *args):
        started = time.perf_counter()
        try:  # a cancel (Prefect's TerminationSignal) or Ctrl-C raises from the task call itself, state or not
            state = task(*args, return_state=True)
            result = state.result()
        except BaseException:
            self.records.append(StageRecord(stage, "failed", round(time.perf_counter() - started, 2)))
            raise
        seconds = round(time.perf_counter() - started, 2)
        if state.name == "Cached":
            outcome = "reused (cached)"
        elif hasattr(result, "created"):
            outcome = "created" if result.created else "reused"
        else:
            outcome = "done"
        self.records.append(StageRecord(stage, outcome, seconds, getattr(result, "label", "")))
        self.results[stage] = result
        return result

    def _started(self, stage: Stage) -> bool:
        return any(record.stage is stage for record in self.records)

    @property
    def candidate_deployed(self) -> bool:
        """The deploy stage started: a deployment this run made may exist (and bill), finished or not."""
        return self._started(Stage.DEPLOY)

    @property
    def traffic_moved(self) -> bool:
        """Going live completed: this run's model took the traffic."""
        return Stage.GO_LIVE in self.results

    @property
    def torn_down(self) -> bool:
        return self._started(Stage.TEARDOWN)

    @property
    def failed_stage(self) -> Stage | None:
        return next((record.stage for record in reversed(self.records) if record.outcome == "failed"), None)

    def rows(self) -> list[dict]:
        return [{**record.__dict__, "stage": str(record.stage)} for record in self.records]

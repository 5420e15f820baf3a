"""Stage 7, the evaluation gate of blue/green: a retrained model takes the traffic only if it answers the
held-out test questions no worse than the live model (by `evaluation.margin`)."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from pydantic import BaseModel

from phi3_pipeline.chat_data.evaluation import gate_questions, mean_f1
from phi3_pipeline.chat_data.split_files import split_once
from phi3_pipeline.config.errors import PipelineError
from phi3_pipeline.config.settings import PipelineSettings
from phi3_pipeline.stages import Stage
from phi3_pipeline.targets.base import DeploymentRef
from tasks.retries import stage_retries
from tasks.run_target import stage_target

# The smoke question is asked as the tutorial's chat flow asks it; the comparison decodes greedily.
SMOKE_TEMPERATURE, SMOKE_MAX_NEW_TOKENS = 0.7, 128


class GateFailedError(PipelineError):
    """The candidate did worse than the live model: traffic stays where it was."""


class GateResult(BaseModel):
    candidate: str
    live: str | None
    questions: int
    candidate_f1: float | None = None
    live_f1: float | None = None
    margin: float
    passed: bool
    reason: str

    @property
    def label(self) -> str:
        return self.reason


def _compare(settings: PipelineSettings, target, candidate: DeploymentRef, live: DeploymentRef) -> GateResult:
    evaluation = settings.evaluation
    split = split_once(settings.dataset, target.local_root())  # the dataset stage's split, made once
    pairs = gate_questions(split.test_file, evaluation.questions)
    scores = {deployment.deployment_name: mean_f1(
        [target.ask(deployment, question, evaluation.max_new_tokens) for question, _ in pairs], pairs)
        for deployment in (candidate, live)}
    candidate_f1, live_f1 = scores[candidate.deployment_name], scores[live.deployment_name]
    passed = candidate_f1 >= live_f1 - evaluation.margin
    verdict = "passed" if passed else "failed"
    return GateResult(
        candidate=candidate.deployment_name, live=live.deployment_name, questions=len(pairs),
        candidate_f1=round(candidate_f1, 4), live_f1=round(live_f1, 4), margin=evaluation.margin, passed=passed,
        reason=f"gate {verdict}: {candidate.deployment_name} token F1 {candidate_f1:.3f} vs live "
               f"{live.deployment_name} {live_f1:.3f} on {len(pairs)} test questions (margin {evaluation.margin:g})")


def _passed(settings: PipelineSettings, candidate: DeploymentRef, reason: str) -> GateResult:
    return GateResult(candidate=candidate.deployment_name, live=None, questions=0,
                      margin=settings.evaluation.margin, passed=True, reason=reason)


@task(name=Stage.GATE.task_name, **stage_retries())
def evaluation_gate(settings: PipelineSettings, candidate: DeploymentRef, live: DeploymentRef | None) -> GateResult:
    """The candidate must answer the smoke question; beside a live model it must also score no worse. One that
    is the live deployment already (a re-run) has nothing to pass: the smoke chat stage asks it."""
    target = stage_target(settings)
    if live is not None and live.deployment_name == candidate.deployment_name:
        result = _passed(settings, candidate, "the candidate is the live deployment already: nothing to compare")
    else:
        if not target.ask(candidate, settings.question, SMOKE_MAX_NEW_TOKENS, SMOKE_TEMPERATURE).strip():
            raise GateFailedError(f"{candidate.deployment_name} gave an empty answer to {settings.question!r}")
        result = (_compare(settings, target, candidate, live) if live else
                  _passed(settings, candidate, "no live model to compare with; the smoke question was answered"))
    get_run_logger().info(result.reason)
    create_table_artifact(key="evaluation-gate", table=[result.model_dump()],
                          description="blue/green gate: candidate against the live model on held-out questions")
    if not result.passed:
        raise GateFailedError(f"{result.reason}; traffic stays on {live.deployment_name}, the candidate is removed")
    return result

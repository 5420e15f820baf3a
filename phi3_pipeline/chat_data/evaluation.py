"""The blue/green evaluation gate's metric: how close each model's answers are to the held-out replies.

Scored through the deployments' own scoring contract, so the same gate serves both targets: for each
of the first N test conversations, the first user turn is asked and the answer compared with the
reference assistant turn by token F1 (the SQuAD answer-overlap measure).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

TOKEN = re.compile(r"\w+")


def gate_questions(test_file: Path, count: int) -> list[tuple[str, str]]:
    """(question, reference answer) of the first `count` test conversations with a user then an assistant turn."""
    pairs = []
    for line in test_file.read_text(encoding="utf-8").splitlines():
        messages = json.loads(line)["messages"]
        user = next((i for i, m in enumerate(messages) if m["role"] == "user"), None)
        reply = next((m for m in messages[(user or 0) + 1:] if m["role"] == "assistant"), None)
        if user is not None and reply is not None:
            pairs.append((messages[user]["content"], reply["content"]))
        if len(pairs) == count:
            break
    return pairs


def token_f1(answer: str, reference: str) -> float:
    predicted, expected = TOKEN.findall(answer.lower()), TOKEN.findall(reference.lower())
    common = sum((Counter(predicted) & Counter(expected)).values())
    if not common:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def mean_f1(answers: list[str], pairs: list[tuple[str, str]]) -> float:
    return sum(token_f1(answer, reference) for answer, (_, reference) in zip(answers, pairs, strict=True)) / len(pairs)

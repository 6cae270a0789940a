"""Answer scores of the instruction benchmarks: exact match and ROUGE-L, both in percent."""

from __future__ import annotations

import string
from collections.abc import Callable, Sequence

from rouge_score import rouge_scorer

_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)

#: Separates the acceptable answers held in one reference string (ASCII record separator).
ANSWER_SEPARATOR = "\x1e"

# Built once: the scorer holds the tokenizer and the Porter stemmer.
_ROUGE_L = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def normalize_answer(text: str) -> str:
    """Lowercase, remove ASCII punctuation and collapse whitespace.

    Articles are kept: the benchmarks' exact match normalises exactly this much.

    :param text: an answer.
    :return: the normalised answer.
    """
    return " ".join(text.lower().translate(_NO_PUNCTUATION).split())


def exact_match(prediction: str, reference: str) -> float:
    """100 if both answers are equal after :func:`normalize_answer`, else 0.

    :param prediction: the generated answer.
    :param reference: the reference answer.
    :return: the score in percent.
    """
    return 100.0 if normalize_answer(prediction) == normalize_answer(reference) else 0.0


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 with Porter stemming (``rouge_score`` package), times 100.

    :param prediction: the generated answer.
    :param reference: the reference answer.
    :return: the score in percent.
    """
    return 100.0 * _ROUGE_L.score(reference, prediction)["rougeL"].fmeasure


def join_answers(answers: Sequence[str]) -> str:
    """Several acceptable answers as one reference string for :func:`batch_scores`.

    :param answers: the answers, the one trained on first.
    :raises ValueError: when an answer contains :data:`ANSWER_SEPARATOR` itself.
    """
    if any(ANSWER_SEPARATOR in answer for answer in answers):
        raise ValueError("an answer contains the ASCII record separator (\\x1e) that joins references: remove it")
    return ANSWER_SEPARATOR.join(answers)


def batch_scores(
    score: Callable[[str, str], float], predictions: Sequence[str], references: Sequence[str]
) -> list[float]:
    """Score each prediction against the reference at the same position.

    A reference made by :func:`join_answers` holds several acceptable answers; the prediction
    gets its best score over them (SuperNI's evaluation).

    :param score: a pairwise score such as :func:`exact_match` or :func:`rouge_l`.
    :param predictions: the generated answers.
    :param references: the reference answers, one per prediction.
    :return: one score per pair.
    """
    if len(predictions) != len(references):
        raise ValueError(
            f"got {len(predictions)} predictions for {len(references)} references: pass one prediction per reference"
        )
    return [
        max(score(prediction, answer) for answer in reference.split(ANSWER_SEPARATOR))
        for prediction, reference in zip(predictions, references)
    ]

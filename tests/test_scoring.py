"""Exact match and ROUGE-L of generated answers."""

import pytest

from avalanche_gainlora.scoring import batch_scores, exact_match, join_answers, normalize_answer, rouge_l


@pytest.mark.parametrize(
    ("text", "normalized"),
    [
        ("  The  Cat!! ", "the cat"),
        ("Positive.", "positive"),
        ("a.b, c\n\td", "ab c d"),
        ("An apple", "an apple"),  # articles stay
        ("", ""),
    ],
)
def test_normalize_answer(text, normalized):
    assert normalize_answer(text) == normalized


@pytest.mark.parametrize(
    ("prediction", "reference", "score"),
    [
        ("Positive.", "positive", 100.0),
        ("  entailment ", "Entailment", 100.0),
        ("the positive", "positive", 0.0),
        ("negative", "positive", 0.0),
    ],
)
def test_exact_match(prediction, reference, score):
    assert exact_match(prediction, reference) == score


def test_rouge_l_identical_and_disjoint():
    assert rouge_l("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(100.0)
    assert rouge_l("red green", "blue yellow") == 0.0


def test_rouge_l_partial_overlap_is_stemmed_f1():
    # Stemmed tokens: "the cat are run" vs "a cat run"; LCS "cat run" = 2,
    # precision 2/4, recall 2/3, F1 = 2 * (1/2) * (2/3) / (1/2 + 2/3) = 4/7.
    assert rouge_l("The cats are running", "a cat runs") == pytest.approx(400 / 7)


def test_batch_scores_pairs_by_position():
    assert batch_scores(exact_match, ["yes", "no"], ["Yes!", "yes"]) == [100.0, 0.0]
    assert batch_scores(rouge_l, ["a b", "c"], ["a b", "d"]) == pytest.approx([100.0, 0.0])


def test_a_prediction_gets_its_best_score_over_several_answers():
    references = [join_answers(["blue whale", "whale"]), join_answers(["a b c d"])]
    assert batch_scores(exact_match, ["Whale.", "a b"], references) == [100.0, 0.0]
    assert batch_scores(rouge_l, ["the whale", "a b"], references) == pytest.approx([100 * 2 / 3, 100 * 2 / 3])
    with pytest.raises(ValueError, match="record separator"):
        join_answers(["a\x1eb"])


def test_batch_scores_rejects_length_mismatch():
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        batch_scores(exact_match, ["a", "b"], ["a"])

"""Instruction data: task orders, prompts, seeded caps, the test carve-out, missing data, AP/FT."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from avalanche_gainlora.data import InstructionExample
from gpm_gainlora_experiments.lm.instruction import BENCHMARKS, load_tasks, resolve_order
from gpm_gainlora_experiments.common.metrics import ap_ft

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# The orders of gainlora.md, written out again so the presets are checked against the reference.
REFERENCE_ORDERS = {
    1: "samsum sst2 xsum outcome_extraction quoref evalution_relation multi_woz personachat commonsenseqa "
    "diplomacy glucose reddit_tifu sciq sentiment140 emotion",
    2: "glucose commonsenseqa diplomacy multi_woz samsum sentiment140 sciq sst2 evalution_relation "
    "personachat outcome_extraction reddit_tifu quoref xsum emotion",
    3: "yelp amazon mnli cb copa qqp rte imdb sst2 dbpedia agnews yahoo multirc boolq wic",
    4: "mnli cb wic copa qqp boolq rte imdb yelp amazon sst2 dbpedia agnews multirc yahoo",
}
SUPERNI_PROMPT = "Definition: {}\n\nNow complete the following example -\nInput: {}\nOutput: "


def write_split(root: Path, benchmark: str, task: str, split: str, definition: list[str], instances: list) -> None:
    """One split file in the CL_Benchmark layout; ``instances`` are ``(input, output)`` pairs."""
    folder = root / "CL_Benchmark" / BENCHMARKS[benchmark].folder / BENCHMARKS[benchmark].task_folders[task]
    folder.mkdir(parents=True, exist_ok=True)
    data = {"Definition": definition, "Instances": [{"input": x, "output": y} for x, y in instances]}
    (folder / f"{split}.json").write_text(json.dumps(data), encoding="utf-8")


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    """SuperNI samsum/sst2/xsum and Long Sequence cb/copa (full) and yelp (train only), dbpedia (test only)."""
    for task in ("samsum", "sst2", "xsum"):
        train = [(f"{task} x{i}", [f"{task} y{i}", "alt"]) for i in range(20)]
        write_split(tmp_path, "superni", task, "train", [f"{task} def"], train)
        test = [(f"{task} t{i}", [f"{task} u{i}"]) for i in range(10)]
        write_split(tmp_path, "superni", task, "test", [f"{task} def"], test)
        # dev.json differs from test.json and is not even JSON: reading it would fail loudly.
        dev = tmp_path / "CL_Benchmark" / "SuperNI" / BENCHMARKS["superni"].task_folders[task] / "dev.json"
        dev.write_text("not json, must never be read", encoding="utf-8")
    write_split(tmp_path, "long_sequence", "cb", "train", ["cb def\n"], [(f"cb x{i}", "neutral") for i in range(8)])
    write_split(tmp_path, "long_sequence", "cb", "test", ["cb def\n"], [(f"cb t{i}", "entailment") for i in range(4)])
    write_split(tmp_path, "long_sequence", "copa", "train", [], [("copa x", "A")])
    write_split(tmp_path, "long_sequence", "copa", "test", [], [("copa t", "B")])
    yelp = [(f"yelp x{i}", "positive") for i in range(40)]
    write_split(tmp_path, "long_sequence", "yelp", "train", ["yelp def"], yelp)
    write_split(tmp_path, "long_sequence", "dbpedia", "test", ["dbpedia def"], [("dbpedia t", "Company")])
    return tmp_path


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_preset_orders_match_the_reference(order):
    benchmark = "superni" if order <= 2 else "long_sequence"
    names = resolve_order(benchmark, order)
    assert names == tuple(REFERENCE_ORDERS[order].split())
    assert sorted(names) == sorted(BENCHMARKS[benchmark].task_folders)  # each of the 15 tasks once


@pytest.mark.parametrize(
    ("benchmark", "order", "message"),
    [
        ("long_sequence", 1, "order 1 is a superni order"),
        ("superni", 5, "unknown task order 5"),
        ("superni", ["samsum", "no_such_task"], "unknown superni task(s) ['no_such_task']; valid names are"),
        ("superni", ["samsum", "samsum"], "appear more than once"),
        ("superni", "samsum", "got the string 'samsum'"),
        ("superni", [], "order is empty"),
        ("t5", 1, "unknown instruction benchmark 't5'"),
    ],
)
def test_invalid_orders_are_rejected(benchmark, order, message):
    with pytest.raises(ValueError) as error:
        resolve_order(benchmark, order)
    assert message in str(error.value)


def test_unknown_task_error_lists_the_valid_names():
    with pytest.raises(ValueError) as error:
        resolve_order("long_sequence", ["yelp", "sst-2"])
    assert "'sst-2'" in str(error.value)
    assert all(repr(name) in str(error.value) for name in BENCHMARKS["long_sequence"].task_folders)


def test_custom_order_loads_tasks_in_the_given_order(data_root):
    tasks = load_tasks("superni", ["xsum", "samsum"], data_root)
    assert [(t.name, t.benchmark, len(t.train), len(t.test)) for t in tasks] == [
        ("xsum", "superni", 20, 10),
        ("samsum", "superni", 20, 10),
    ]
    assert all(isinstance(e, InstructionExample) for t in tasks for e in t.train + t.test)


def test_prompts_and_answers_are_formatted_exactly(data_root):
    samsum = load_tasks("superni", ["samsum"], data_root)[0]
    # A list output's first reference is the answer, the others are alternatives for scoring.
    assert samsum.train[3] == InstructionExample(
        SUPERNI_PROMPT.format("samsum def", "samsum x3"), "samsum y3", alternatives=("alt",)
    )
    assert samsum.test[0] == InstructionExample(SUPERNI_PROMPT.format("samsum def", "samsum t0"), "samsum u0")
    cb, copa = load_tasks("long_sequence", ["cb", "copa"], data_root)
    # Texts are kept as stored: the definition's trailing newline stays.
    assert cb.train[0] == InstructionExample("cb def\n\ncb x0\nOutput: ", "neutral")
    # An empty Definition list (copa) is the empty definition.
    assert copa.test == [InstructionExample("\ncopa t\nOutput: ", "B")]


def test_caps_are_seeded_and_independent_of_the_task_order(data_root):
    def subsets(order, seed, max_train=5):
        tasks = load_tasks("superni", order, data_root, max_train=max_train, max_test=3, seed=seed)
        return {t.name: (t.train, t.test) for t in tasks}

    first = subsets(["samsum", "sst2", "xsum"], seed=1)
    assert all(len(train) == 5 and len(test) == 3 for train, test in first.values())
    assert subsets(["samsum", "sst2", "xsum"], seed=1) == first
    assert subsets(["xsum", "samsum", "sst2"], seed=1) == first
    assert subsets(["sst2"], seed=1)["sst2"] == first["sst2"]
    assert subsets(["samsum", "sst2", "xsum"], seed=2) != first
    # Kept examples stay in file order, and a smaller cap keeps a subset of a larger one.
    indices = [int(e.answer.removeprefix("samsum y")) for e in first["samsum"][0]]
    assert indices == sorted(indices)
    assert set(subsets(["samsum"], seed=1, max_train=2)["samsum"][0]) <= set(first["samsum"][0])


@pytest.mark.parametrize(
    ("option", "value"), [("max_train", 0), ("max_test", -1), ("max_train", 2.5), ("max_test", True)]
)
def test_invalid_caps_are_rejected(data_root, option, value):
    with pytest.raises(ValueError, match=option):
        load_tasks("superni", ["samsum"], data_root, **{option: value})


def test_dev_json_is_never_read(data_root):
    # The fixture's dev.json files are not JSON, so any read of them would raise.
    tasks = load_tasks("superni", ["samsum", "sst2", "xsum"], data_root)
    assert all(e.answer.startswith(f"{t.name} u") for t in tasks for e in t.test)


def test_missing_test_split_names_the_file_and_the_carve_option(data_root):
    with pytest.raises(FileNotFoundError) as error:
        load_tasks("long_sequence", ["cb", "yelp"], data_root)
    message = str(error.value)
    assert "yelp" in message and str(data_root / "CL_Benchmark" / "Long_Sequence" / "yelp" / "test.json") in message
    assert "carve_test_from_train" in message and "cb:" not in message


def test_missing_train_split_errors_even_with_a_carve(data_root):
    with pytest.raises(FileNotFoundError) as error:
        load_tasks("long_sequence", ["dbpedia", "yelp", "wic"], data_root, carve_test_from_train=0.25)
    lines = str(error.value).splitlines()[1:]
    # One error lists every problem; yelp is fine once a carve is asked for.
    assert len(lines) == 2
    assert lines[0].strip().startswith("dbpedia:") and "dbpedia/train.json is missing" in lines[0]
    assert lines[1].strip().startswith("wic:") and "wic/train.json is missing" in lines[1]


@pytest.mark.parametrize(("carve", "test_size"), [(0.25, 10), (0.001, 1), (7, 7)])
def test_carve_splits_train_into_disjoint_seeded_parts(data_root, carve, test_size):
    def load(seed, max_train=None):
        return load_tasks(
            "long_sequence", ["cb", "yelp"], data_root, seed=seed, max_train=max_train, carve_test_from_train=carve
        )

    cb, yelp = load(seed=0)
    assert not cb.carved_test and len(cb.test) == 4  # a task with test.json is never carved
    assert yelp.carved_test and len(yelp.test) == test_size and len(yelp.train) == 40 - test_size
    assert not set(yelp.train) & set(yelp.test)
    assert {e.prompt for e in yelp.train + yelp.test} == {f"yelp def\nyelp x{i}\nOutput: " for i in range(40)}
    assert load(seed=0)[1] == yelp
    assert test_size == 1 or load(seed=1)[1].test != yelp.test
    # The carve sees all of train.json: the held-out part does not depend on the training cap.
    capped = load(seed=0, max_train=3)[1]
    assert capped.test == yelp.test and len(capped.train) == 3 and set(capped.train) <= set(yelp.train)


@pytest.mark.parametrize("carve", [0, 0.0, 1.0, -3, True, "0.1"])
def test_invalid_carve_values_are_rejected(data_root, carve):
    with pytest.raises(ValueError, match="carve_test_from_train must be"):
        load_tasks("long_sequence", ["yelp"], data_root, carve_test_from_train=carve)


def test_carve_must_leave_training_data(data_root):
    with pytest.raises(ValueError, match="at least one must stay for training"):
        load_tasks("long_sequence", ["yelp"], data_root, carve_test_from_train=40)


def test_missing_data_root_names_the_expected_layout(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        load_tasks("superni", 1, tmp_path / "nowhere")
    message = str(error.value)
    assert "CL_Benchmark/SuperNI/<task>/{train,test}.json" in message and "contains CL_Benchmark/" in message


@pytest.mark.skipif(not (REAL_DATA / "CL_Benchmark").is_dir(), reason="shared data folder absent")
def test_real_data_orders_load_with_small_caps():
    superni = load_tasks("superni", 1, REAL_DATA, max_train=4, max_test=2, seed=0)
    assert [t.name for t in superni] == REFERENCE_ORDERS[1].split()
    assert all(len(t.train) == 4 and len(t.test) == 2 and not t.carved_test for t in superni)
    prompts = [e.prompt for t in superni for e in t.train + t.test]
    assert all(p.startswith("Definition: ") and p.endswith("\nOutput: ") for p in prompts)

    with pytest.raises(FileNotFoundError) as error:
        load_tasks("long_sequence", 3, REAL_DATA, max_train=4, max_test=2)
    problems = {line.split(":")[0].strip(): line for line in str(error.value).splitlines()[1:]}
    assert sorted(problems) == ["dbpedia", "imdb", "multirc", "yahoo", "yelp"]
    assert all("train.json is missing" in problems[t] for t in ("dbpedia", "yahoo"))
    assert all("test.json is missing" in problems[t] for t in ("imdb", "multirc", "yelp"))

    with pytest.raises(FileNotFoundError) as error:
        load_tasks("long_sequence", 3, REAL_DATA, max_train=4, max_test=2, carve_test_from_train=0.1)
    assert sorted(line.split(":")[0].strip() for line in str(error.value).splitlines()[1:]) == ["dbpedia", "yahoo"]

    loadable = [t for t in REFERENCE_ORDERS[3].split() if t not in ("dbpedia", "yahoo")]
    tasks = load_tasks("long_sequence", loadable, REAL_DATA, max_train=4, max_test=2, carve_test_from_train=0.1)
    assert [t.name for t in tasks] == loadable
    assert {t.name for t in tasks if t.carved_test} == {"imdb", "multirc", "yelp"}
    assert all(len(t.train) == 4 and len(t.test) == 2 for t in tasks)
    copa = next(t for t in tasks if t.name == "copa")
    assert copa.test[0].prompt.startswith("\n") and copa.test[0].answer in ("A", "B")


def test_ap_ft_on_a_hand_made_matrix():
    nan = math.nan
    # Task 0 peaks after task 1 (80); the 95 above the diagonal is task 1 before training it
    # and must not count; NaN marks an entry never evaluated.
    scores = [[60.0, 95.0, nan], [80.0, 90.0, 0.0], [50.0, 70.0, 100.0]]
    ap, ft = ap_ft(scores)
    assert ap == pytest.approx((50 + 70 + 100) / 3)
    assert ft == pytest.approx(((80 - 50) + (90 - 70)) / 2)
    ap, ft = ap_ft([[42.0]])
    assert ap == 42.0 and math.isnan(ft)
    for bad in ([[1.0, 2.0]], [], [[[1.0]]]):
        with pytest.raises(ValueError, match="square and non-empty"):
            ap_ft(bad)


def test_validation_carve_replaces_the_test_split_with_held_out_training_examples(data_root):
    def load(seed=0, **kwargs):
        return load_tasks("superni", ["samsum", "sst2"], data_root, seed=seed, validation_from_train=5, **kwargs)

    samsum, sst2 = load()
    for task in (samsum, sst2):
        assert task.validation and not task.carved_test
        assert len(task.test) == 5 and len(task.train) == 15 and not set(task.train) & set(task.test)
        assert all(" x" in e.prompt for e in task.test)  # from train.json, never test.json
    assert load()[0] == samsum and load(seed=1)[0].test != samsum.test
    # the training cap applies to what is left, so the validation set does not depend on it
    capped = load(max_train=4)[0]
    assert capped.test == samsum.test and len(capped.train) == 4 and set(capped.train) <= set(samsum.train)
    with pytest.raises(ValueError, match="validation_from_train"):
        load_tasks("superni", ["samsum"], data_root, validation_from_train=0)

"""Loading a task order of SuperNI or Long Sequence as instruction-tuning tasks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from avalanche_gainlora.data import InstructionExample
from gpm_gainlora_experiments.lm.instruction.files import read_task_file
from gpm_gainlora_experiments.lm.instruction.orders import get_benchmark, resolve_order
from gpm_gainlora_experiments.lm.instruction.sampling import carve, carve_size, take, task_rng
from gpm_gainlora_experiments.lm.instruction.spec import InstructionBenchmark

_SPLITS = ("train", "test")


@dataclass(frozen=True)
class InstructionTask:
    """One task of an instruction-tuning task order.

    :param name: the task's name in the order (e.g. ``"samsum"``).
    :param benchmark: ``"superni"`` or ``"long_sequence"``.
    :param train: training examples, in file order.
    :param test: test examples, in file order.
    :param carved_test: whether :attr:`test` was held out of ``train.json`` because the task
        has no ``test.json`` (see :func:`load_tasks`).
    :param validation: whether :attr:`test` is a validation set held out of the training
        examples (``validation_from_train``) rather than the task's test split.
    """

    name: str
    benchmark: str
    train: list[InstructionExample]
    test: list[InstructionExample]
    carved_test: bool = False
    validation: bool = False


def _check_cap(option: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{option} must be None (no cap) or a positive int, got {value!r}")


def _check_carve(value: float | int | None) -> None:
    if value is None:
        return
    fraction = isinstance(value, float) and 0.0 < value < 1.0
    count = isinstance(value, int) and not isinstance(value, bool) and value >= 1
    if not (fraction or count):
        raise ValueError(
            f"carve_test_from_train must be a fraction in (0, 1) (float) or a count >= 1 (int), got {value!r}"
        )


def _benchmark_root(spec: InstructionBenchmark, data_root: str | Path) -> Path:
    root = Path(data_root) / "CL_Benchmark" / spec.folder
    if not root.is_dir():
        raise FileNotFoundError(
            f"no {spec.name} data at {root}: expected the layout "
            f"<data_root>/CL_Benchmark/{spec.folder}/<task>/{{train,test}}.json, where data_root is the "
            f"folder that contains CL_Benchmark/ (e.g. ../shared/data), got data_root={str(data_root)!r}"
        )
    return root


def _missing_files(
    spec: InstructionBenchmark, root: Path, names: Sequence[str], carve_test: float | int | None
) -> list[str]:
    """One line per file the order needs but lacks, with what the user can do about it."""
    problems = []
    for name in names:
        folder = root / spec.task_folders[name]
        if not (folder / "train.json").is_file():
            problems.append(
                f"{name}: {folder / 'train.json'} is missing; a task without training data cannot be "
                "loaded, leave it out of the order (pass a list of task names)"
            )
        elif not (folder / "test.json").is_file() and carve_test is None:
            problems.append(
                f"{name}: {folder / 'test.json'} is missing; pass carve_test_from_train=<fraction or count> "
                "to hold out a seeded test split of train.json, or leave the task out of the order"
            )
    return problems


def _examples(
    spec: InstructionBenchmark, definition: str, pairs: list[tuple[str, tuple[str, ...]]]
) -> list[InstructionExample]:
    return [
        InstructionExample(prompt=spec.prompt(definition, text), answer=references[0], alternatives=references[1:])
        for text, references in pairs
    ]


def _load_task(
    spec: InstructionBenchmark,
    root: Path,
    name: str,
    *,
    max_train: int | None,
    max_test: int | None,
    seed: int,
    carve_test: float | int | None,
    validation: int | None = None,
) -> InstructionTask:
    folder = root / spec.task_folders[name]
    train_file = read_task_file(folder / "train.json")
    train_pairs = train_file.instances
    carved = not (folder / "test.json").is_file()
    if carved:
        # The carve sees all of train.json, so the held-out test set does not depend on max_train.
        size = carve_size(carve_test, len(train_pairs))
        train_pairs, test_pairs = carve(train_pairs, size, task_rng(seed, spec.name, name, "carve"))
        test_definition = train_file.definition
    else:
        test_file = read_task_file(folder / "test.json")
        test_pairs, test_definition = test_file.instances, test_file.definition
    if validation is not None:
        # Evaluation on examples held out of the training part; the test split is not used.
        size = carve_size(validation, len(train_pairs))
        train_pairs, test_pairs = carve(train_pairs, size, task_rng(seed, spec.name, name, "validation"))
        carved = False
    train_pairs = take(train_pairs, max_train, task_rng(seed, spec.name, name, "train"))
    test_pairs = take(test_pairs, max_test, task_rng(seed, spec.name, name, "test"))
    return InstructionTask(
        name=name,
        benchmark=spec.name,
        train=_examples(spec, train_file.definition, train_pairs),
        test=_examples(spec, test_definition, test_pairs),
        carved_test=carved,
        validation=validation is not None,
    )


def load_tasks(
    benchmark: str,
    order: int | Sequence[str],
    data_root: str | Path,
    *,
    max_train: int | None = None,
    max_test: int | None = None,
    seed: int = 0,
    carve_test_from_train: float | int | None = None,
    validation_from_train: int | None = None,
) -> list[InstructionTask]:
    """Load the tasks of a task order, formatted as prompts with reference answers.

    Reads ``<data_root>/CL_Benchmark/<SuperNI|Long_Sequence>/<task>/{train,test}.json``.
    ``dev.json`` is never read: in this benchmark it is byte-identical to ``test.json``, so
    selecting models or hyper-parameters on it would be selecting on the test set. Hold out a
    validation set from the training examples instead.

    Prompts (texts unchanged, no stripping): SuperNI ``"Definition: {def}\\n\\nNow complete the
    following example -\\nInput: {x}\\nOutput: "``; Long Sequence ``"{def}\\n{x}\\nOutput: "``.
    The definition is the first element of the file's ``Definition`` list (empty for ``copa``);
    the answer is the first element of a list ``output`` (see :mod:`~gpm_gainlora_experiments.lm.instruction.files`).

    Caps draw a seeded subset per task and split from a generator keyed by ``seed``, the
    benchmark, the task and the split, so a task gets the same examples whatever the order and
    whichever other tasks are loaded; kept examples stay in file order.

    Tasks without ``test.json`` (Long Sequence yelp, imdb, multirc here) need
    ``carve_test_from_train``: a seeded permutation of all of ``train.json`` (keyed like the
    caps) puts its first ``k`` instances in the test part and the rest in the training part,
    ``k = max(1, round(fraction * n))`` for a float or ``k`` = the count for an int; the caps then
    apply to each part. Tasks with ``test.json`` are never carved. Tasks without ``train.json``
    (dbpedia, yahoo here) cannot be loaded.

    :param benchmark: ``"superni"`` or ``"long_sequence"``.
    :param order: a preset (1, 2: SuperNI; 3, 4: Long Sequence, as in the GainLoRA paper) or a
        list of task names in training order.
    :param data_root: the folder that contains ``CL_Benchmark/`` (e.g. ``../shared/data``).
    :param max_train: the most training examples per task; ``None`` keeps all.
    :param max_test: the most test examples per task; ``None`` keeps all.
    :param seed: seed of the caps and of the carve.
    :param carve_test_from_train: for tasks without ``test.json``: the fraction (float in
        (0, 1)) or number (int) of ``train.json`` instances held out as the test split;
        ``None`` makes such tasks an error.
    :param validation_from_train: hold this many training examples of every task out (a seeded
        carve of the training part, keyed like the caps) and put them in the tasks' ``test``
        field instead of the test split, for choosing hyper-parameters (``validation=True``).
    :return: the tasks in training order.
    :raises ValueError: for an unknown benchmark, order or task name, or an invalid option.
    :raises FileNotFoundError: when the data root lacks the benchmark, or when a task lacks a
        split it needs; the message lists every missing file with the way out.
    """
    _check_cap("max_train", max_train)
    _check_cap("max_test", max_test)
    _check_carve(carve_test_from_train)
    _check_cap("validation_from_train", validation_from_train)
    spec = get_benchmark(benchmark)
    names = resolve_order(benchmark, order)
    root = _benchmark_root(spec, data_root)
    # Check every task before reading any, so one error lists all that is missing.
    problems = _missing_files(spec, root, names, carve_test_from_train)
    if problems:
        raise FileNotFoundError(f"cannot load {benchmark} tasks:\n  " + "\n  ".join(problems))
    return [
        _load_task(
            spec,
            root,
            name,
            max_train=max_train,
            max_test=max_test,
            seed=seed,
            carve_test=carve_test_from_train,
            validation=validation_from_train,
        )
        for name in names
    ]

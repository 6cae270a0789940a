"""Choose a strategy's options on the validation split: one run per point of a grid, never the test set.

Example (EWC's lambda and mode on Permuted MNIST, seed 1, one epoch per task)::

    gpm-gainlora-tune --benchmark pmnist --strategy ewc --seeds 1 --epochs 1 \\
        --grid ewc_lambda=100,1000 --grid mode=online --grid decay_factor=1.0 \\
        --data-root ../shared/data --out results/tuning/pmnist_ewc

Each point trains the whole stream with the preset's protocol, the point's options on top, and
fills the accuracy matrix from the validation split. Records are named
``<strategy>_<option>-<value>..._seed<seed>.json`` and skipped when they exist, so a grid resumes and
several commands (e.g. one per EWC mode) can share one folder. ``tuning.md`` and ``tuning.csv``
rank every point in the folder by validation ACC.
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import os
import re
import typing
from collections import defaultdict
from collections.abc import Mapping, Sequence
from numbers import Real
from pathlib import Path
from typing import Any

import torch

from gpm_gainlora_experiments.image.benchmarks import BENCHMARKS, get_benchmark
from gpm_gainlora_experiments.common.cli_errors import exit_on_user_error
from gpm_gainlora_experiments.common.cli_types import comma_list, random_seed
from gpm_gainlora_experiments.image.cli import add_run_arguments, run_keywords, strategy_name
from gpm_gainlora_experiments.common.configs import differing_fields
from gpm_gainlora_experiments.common.evaluation import quiet_evaluator
from gpm_gainlora_experiments.image.hyperparams import Hyperparams
from gpm_gainlora_experiments.common.records import read_record
from gpm_gainlora_experiments.image.runner import run
from gpm_gainlora_experiments.image.strategies import STRATEGIES, build_strategy
from gpm_gainlora_experiments.common.tables import divergence_note, markdown_table, summarise, write_csv

#: Options of one grid point, by name.
Point = dict[str, Any]


def parse_value(text: str) -> Any:
    """An option value from the command line: int, float, bool, None, or else the string itself."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text.strip()


def parse_grid_axis(text: str) -> tuple[str, list[Any]]:
    """``name=v1,v2,...`` as ``(name, [v1, v2, ...])``.

    :raises argparse.ArgumentTypeError: without ``=`` or without values.
    """
    name, equals, values = text.partition("=")
    parsed = [parse_value(value) for value in values.split(",") if value.strip()]
    if not equals or not name.strip() or not parsed:
        raise argparse.ArgumentTypeError(f"a grid axis is name=value[,value...], e.g. ewc_lambda=10,100; got {text!r}")
    return name.strip(), parsed


def grid_points(axes: Sequence[tuple[str, Sequence[Any]]]) -> list[Point]:
    """Every combination of the axes' values, the last axis varying fastest.

    :param axes: ``(option name, values)`` pairs; names must be distinct.
    :raises ValueError: when an option appears on two axes.
    """
    names = [name for name, _ in axes]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"option(s) {', '.join(repeated)} given on several --grid axes: list all values in one")
    return [dict(zip(names, values)) for values in itertools.product(*(values for _, values in axes))]


def point_label(point: Mapping[str, Any]) -> str:
    """Human-readable name of a point, e.g. ``ewc_lambda=100, mode=online``."""
    return ", ".join(f"{name}={value}" for name, value in point.items())


def point_record_name(strategy: str, point: Mapping[str, Any]) -> str:
    """File-name stem of a point's record, e.g. ``ewc_ewc_lambda-100_mode-online``."""
    parts = [strategy] + [f"{name}-{value}" for name, value in point.items()]
    return re.sub(r"[^A-Za-z0-9_.+-]", "", "_".join(parts))


def check_points(strategy: str, hyperparams: Hyperparams, model: torch.nn.Module, points: Sequence[Point]) -> None:
    """Build the strategy once per point before any training, so a misspelt option or a combination
    the strategy refuses fails in seconds, not hours into the grid.

    :raises ValueError: naming the point and the strategy's complaint, or a value whose kind
        differs from the preset's (a word where the preset has a number: Python would often
        multiply or compare it without complaint).
    """
    preset, annotated = hyperparams.options(strategy), _number_options(strategy)
    for point in points:
        for name, value in point.items():
            if (name in annotated or _is_number(preset.get(name))) and not _is_number(value):
                raise ValueError(
                    f"--grid {name}={value}: {strategy}'s {name} is a number"
                    + (f" (the preset has {preset[name]!r})" if name in preset else "")
                    + "; give numbers, e.g. --grid ewc_lambda=10,100"
                )
        try:
            build_strategy(
                strategy,
                model=model,
                hyperparams=hyperparams.with_options(strategy, point),
                evaluator=quiet_evaluator(),
                device="cpu",
            )
        except (TypeError, ValueError, AssertionError) as error:
            raise ValueError(
                f"strategy {strategy!r} does not accept the options {point_label(point)} "
                f"({error or type(error).__name__}); check the names and values against its constructor"
            ) from None


def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _number_options(strategy: str) -> set[str]:
    """The constructor options of ``strategy`` annotated as a number (``float``, ``Optional[int]``, ...)."""
    constructor = STRATEGIES[strategy]
    try:
        hints = typing.get_type_hints(constructor.__init__ if inspect.isclass(constructor) else constructor)
    except (NameError, TypeError):  # annotations that do not resolve: rely on the preset's values
        return set()
    numbers = {int, float}
    return {
        name
        for name, hint in hints.items()
        if (kinds := set(typing.get_args(hint) or (hint,)) - {type(None)}) and kinds <= numbers
    }


def tune(
    benchmark: str,
    strategy: str,
    points: Sequence[Point],
    seeds: Sequence[int],
    out_dir: str | os.PathLike,
    *,
    hyperparams: Hyperparams | None = None,
    num_tasks: int | None = None,
    data_root: str | None = None,
    download: bool = False,
    device: str = "cpu",
    force: bool = False,
    progress: bool = True,
    loggers: Sequence[str] = (),
    log_dir: str | os.PathLike | None = None,
    batched_loading: bool = True,
) -> str:
    """Run every (point, seed) on the validation split, then write and return the ranking table.

    :param benchmark: registered benchmark name; it needs a validation stream.
    :param strategy: registered strategy name.
    :param points: option settings to try, each applied on top of the preset's options.
    :param seeds: seeds of every point.
    :param out_dir: folder of the records and of ``tuning.md`` / ``tuning.csv``.
    :param hyperparams: the protocol; default the benchmark's preset.
    :param num_tasks: train on the first ``num_tasks`` experiences only; default all.
    :param data_root: folder of local data for benchmarks that need files.
    :param download: let torchvision download missing files where it can.
    :param device: training device.
    :param force: rerun points whose records exist (e.g. made under an earlier preset) and overwrite them.
    :param progress: show progress bars.
    :param loggers: Avalanche loggers of every run, by name (see :func:`~gpm_gainlora_experiments.image.runner.run`).
    :param log_dir: folder of the runs' logs (default ``<out_dir>/logs``).
    :param batched_loading: gather mini-batches from tensors where provably identical (see
        :func:`~gpm_gainlora_experiments.image.runner.run`).
    :return: the markdown table of every point recorded in ``out_dir``, best validation ACC first.
    """
    spec = get_benchmark(benchmark)
    hyperparams = spec.defaults if hyperparams is None else hyperparams
    planned = {"benchmark": benchmark, "num_tasks": num_tasks, "hyperparams": hyperparams.to_dict(strategy)}
    recorded = [record["config"] for record in _validation_records(out_dir, strategy)]
    _check_one_protocol(out_dir, strategy, [_protocol(config) for config in (planned, *recorded)])
    check_points(strategy, hyperparams, spec.model(), points)
    for seed in seeds:
        for point in points:
            run(
                benchmark,
                strategy,
                seed,
                out_dir,
                hyperparams=hyperparams.with_options(strategy, point),
                num_tasks=num_tasks,
                data_root=data_root,
                download=download,
                device=device,
                force=force,
                progress=progress,
                eval_stream="valid",
                record_name=point_record_name(strategy, point),
                loggers=loggers,
                log_dir=log_dir,
                batched_loading=batched_loading,
            )
    return write_tuning_report(out_dir, strategy)


def write_tuning_report(out_dir: str | os.PathLike, strategy: str) -> str:
    """Rank every validation record of ``strategy`` in ``out_dir`` by its options' mean ACC.

    Points are told apart by the options that differ between the records, so the table shows only
    what was tuned (all options when the folder holds a single point); an option a point left to
    the strategy's default shows as ``default``.

    :return: the markdown written to ``tuning.md`` (``tuning.csv`` holds the same rows).
    :raises ValueError: when the folder holds no validation record of the strategy.
    """
    out = Path(out_dir)
    records = _validation_records(out, strategy)
    if not records:
        raise ValueError(f"{out} holds no validation record of {strategy!r}: run gpm_gainlora_experiments.image.tune first")
    _check_one_protocol(out, strategy, [_protocol(r["config"]) for r in records])
    options = [r["config"]["hyperparams"]["options"] for r in records]
    # An option holding a mapping (e.g. per-layer thresholds) differs when any of its entries does.
    # With a single point there is nothing to tell apart: show all its options.
    shown = sorted({name.split(".")[0] for name in differing_fields(options)}) or sorted(set().union(*options))
    by_point: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record, option in zip(records, options):
        by_point[point_label({name: option.get(name, "default") for name in shown})].append(record)
    summaries = summarise(by_point)
    config = records[0]["config"]
    title = (
        f"{strategy} on {config['benchmark']}, validation split, "
        f"{config['hyperparams']['epochs']} epoch(s) per task, tasks: {config['num_tasks'] or 'all'}"
    )
    table = markdown_table(summaries, headers=("options", "val ACC (%)", "val BWT (%)"))
    markdown = "\n".join([title, "", table, "", *divergence_note(by_point)])
    (out / "tuning.md").write_text(markdown)
    write_csv(summaries, out / "tuning.csv", names=("options", "val_acc", "val_bwt"))
    return markdown


def _validation_records(out_dir: str | os.PathLike, strategy: str) -> list[dict[str, Any]]:
    """The validation records of ``strategy`` in ``out_dir``, in file-name order."""
    paths = sorted(Path(out_dir).glob(f"{strategy}_*_seed*.json"))
    records = [read_record(path) for path in paths]
    return [r for r in records if r["config"].get("eval_stream") == "valid" and r["config"]["strategy"] == strategy]


def _protocol(config: Mapping[str, Any]) -> dict[str, Any]:
    """What two records must share to be ranked together: everything but the options and the seed."""
    fixed = {name: value for name, value in config["hyperparams"].items() if name != "options"}
    return {"benchmark": config["benchmark"], "num_tasks": config["num_tasks"], "hyperparams": fixed}


def _check_one_protocol(out_dir: str | os.PathLike, strategy: str, protocols: Sequence[Mapping[str, Any]]) -> None:
    """Refuse to rank points trained under different protocols (e.g. 1 and 5 epochs) in one table.

    :raises ValueError: naming the protocol fields that differ.
    """
    differing = differing_fields(protocols)
    if differing:
        raise ValueError(
            f"{out_dir} would mix {strategy} records of different protocols (they differ in "
            f"{', '.join(differing)}); tune each protocol into its own folder"
        )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line.

    :param argv: arguments (default ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(prog="gpm-gainlora-tune", description=__doc__.split("\n\n")[0])
    parser.add_argument("--benchmark", required=True, choices=sorted(BENCHMARKS))
    parser.add_argument("--strategy", required=True, type=strategy_name)
    parser.add_argument(
        "--grid",
        type=parse_grid_axis,
        action="append",
        required=True,
        help="an option and its values, e.g. ewc_lambda=10,100,1000 (repeat for more options: every "
        "combination runs; one value fixes an option)",
    )
    parser.add_argument(
        "--seeds", type=comma_list(random_seed), nargs="+", default=[[1]], help="(default 1: seed 0 is kept for the test runs)"
    )
    parser.add_argument("--out", required=True, help="folder of the records and the ranking")
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    args.seeds = [seed for group in args.seeds for seed in group]
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Run the grid and print the ranking.

    :param argv: arguments (default ``sys.argv[1:]``).
    """
    args = parse_args(argv)
    with exit_on_user_error():
        points = grid_points(args.grid)
        print(tune(args.benchmark, args.strategy, points, args.seeds, args.out, **run_keywords(args)))


if __name__ == "__main__":
    main()

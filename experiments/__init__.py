"""Reproducible continual-learning experiments: benchmarks, strategies, a resumable runner and reports.

Layout: :mod:`~experiments.benchmarks` registers the benchmarks with their models and protocol
presets, :mod:`~experiments.strategies` builds the strategies, :mod:`~experiments.runner` trains one
(benchmark, strategy, seed) run into a JSON record, :mod:`~experiments.report` summarises a folder of
records (tables in :mod:`~experiments.tables`, figures in :mod:`~experiments.plots`), and
:mod:`~experiments.run` is the command line (``python -m experiments.run``).
"""

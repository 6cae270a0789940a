"""Image experiments: GPM and SGP against Avalanche's baselines on the GPM paper's benchmarks.

:mod:`.benchmarks` registers the benchmarks with their models and protocol presets,
:mod:`.strategies` builds the strategies, :mod:`.runner` trains one (benchmark, strategy, seed) run
into a JSON record (resumable through :mod:`.checkpoints`), :mod:`.report` summarises a folder of
records, :mod:`.tune` scores strategy options on the validation split, and :mod:`.run` is the
command line (``gpm-gainlora-run``; the CPU demo without arguments).
"""

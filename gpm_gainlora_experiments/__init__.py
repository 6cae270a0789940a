"""Command-line experiments that compare GPM and GainLoRA with Avalanche's baselines.

Layout, by domain:

- :mod:`~gpm_gainlora_experiments.common`: what both domains share: run records and their locks,
  checkpoint files, provenance, metrics (ACC/BWT, AP/FT), tables, plots, command-line types and
  errors, and reading a folder of records for a report;
- :mod:`~gpm_gainlora_experiments.image`: GPM, SGP and Avalanche's baselines on the image
  benchmarks (``gpm-gainlora-run``, ``gpm-gainlora-report``, ``gpm-gainlora-tune``);
- :mod:`~gpm_gainlora_experiments.lm`: the LoRA methods on continual instruction tuning
  (``gpm-gainlora-lm-run``, ``gpm-gainlora-lm-report``).

The methods themselves live in :mod:`avalanche_gpm` and :mod:`avalanche_gainlora`; nothing here is
needed to use them.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("avalanche-gpm-gainlora")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "unknown"

__all__ = ["__version__"]

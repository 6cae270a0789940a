"""Gradient Projection Memory (Saha, Garg & Roy, ICLR 2021) for Avalanche.

Layout: :mod:`~avalanche_gpm.subspace` and :mod:`~avalanche_gpm.projection` hold the math,
:mod:`~avalanche_gpm.capture` turns layer inputs into representations,
:mod:`~avalanche_gpm.memory` keeps the per-layer bases; :mod:`~avalanche_gpm.plugin` and
:mod:`~avalanche_gpm.strategy` connect them to Avalanche; :mod:`~avalanche_gpm.models` has the
paper's networks.
"""

from importlib.metadata import PackageNotFoundError, version

from avalanche_gpm.memory import GradientProjectionMemory, LayerMemoryUsage
from avalanche_gpm.plugin import GPMPlugin
from avalanche_gpm.settings import LinearSchedule
from avalanche_gpm.strategy import GPM

try:
    __version__ = version("avalanche-gpm-gainlora")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "unknown"

__all__ = ["GPM", "GPMPlugin", "GradientProjectionMemory", "LayerMemoryUsage", "LinearSchedule", "__version__"]

"""Avalanche plugins used by the experiment presets (not part of the GPM method itself)."""

from experiments.plugins.divergence import DivergenceMonitor
from experiments.plugins.epoch_progress import EpochProgress
from experiments.plugins.validation_schedule import PlateauDecision, PlateauTracker, ValidationLRSchedule

__all__ = ["DivergenceMonitor", "EpochProgress", "PlateauDecision", "PlateauTracker", "ValidationLRSchedule"]

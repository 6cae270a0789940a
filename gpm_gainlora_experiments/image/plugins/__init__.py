"""Avalanche plugins used by the experiment presets (not part of the GPM method itself)."""

from gpm_gainlora_experiments.image.plugins.batched_loading import BatchedLoading
from gpm_gainlora_experiments.image.plugins.divergence import DivergenceMonitor
from gpm_gainlora_experiments.image.plugins.epoch_progress import EpochProgress
from gpm_gainlora_experiments.image.plugins.validation_schedule import PlateauDecision, PlateauTracker, ValidationLRSchedule

__all__ = ["BatchedLoading", "DivergenceMonitor", "EpochProgress", "PlateauDecision", "PlateauTracker", "ValidationLRSchedule"]

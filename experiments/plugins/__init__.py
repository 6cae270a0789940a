"""Avalanche plugins used by the experiment presets (not part of the GPM method itself)."""

from experiments.plugins.validation_schedule import PlateauDecision, PlateauTracker, ValidationLRSchedule

__all__ = ["PlateauDecision", "PlateauTracker", "ValidationLRSchedule"]

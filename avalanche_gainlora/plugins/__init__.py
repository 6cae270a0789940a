"""Avalanche plugins of the LoRA methods: SeqLoRA, O-LoRA, InfLoRA and GainLoRA on top of either."""

from avalanche_gainlora.plugins.branch_plugin import BranchPlugin, SeqLoRAPlugin
from avalanche_gainlora.plugins.gainlora import GainLoRAPlugin
from avalanche_gainlora.plugins.inflora import InfLoRAPlugin
from avalanche_gainlora.plugins.olora import OLoRAPlugin

__all__ = ["BranchPlugin", "GainLoRAPlugin", "InfLoRAPlugin", "OLoRAPlugin", "SeqLoRAPlugin"]

"""GainLoRA (gated integration of LoRA branches) with its base methods O-LoRA and InfLoRA for Avalanche."""

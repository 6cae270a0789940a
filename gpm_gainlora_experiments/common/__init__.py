"""Pieces both experiment domains use: records (:mod:`.records`), checkpoint files
(:mod:`.checkpoints`), provenance (:mod:`.provenance`), metrics (:mod:`.metrics`), tables
(:mod:`.tables`), figures (:mod:`.plots`), reading a folder of records (:mod:`.results`),
Avalanche evaluation helpers (:mod:`.evaluation`), devices and the command lines' types and errors."""

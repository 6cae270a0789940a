"""Language-model experiments: SeqLoRA, O-LoRA, InfLoRA and GainLoRA on continual instruction tuning.

:mod:`.instruction` loads the SuperNI and Long Sequence task orders, :mod:`.models` the (offline)
language models, :mod:`.methods` builds each method's plugins by name, :mod:`.runner` trains one
(method, seed) run into a JSON record (resumable through :mod:`.checkpoints`), :mod:`.diagnostics`
and :mod:`.report` summarise a folder, and :mod:`.run` is the command line (``gpm-gainlora-lm-run``).
"""

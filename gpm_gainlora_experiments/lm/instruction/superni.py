"""The 15 SuperNI tasks of the GainLoRA / SAPT benchmark and their prompt."""

from __future__ import annotations

from gpm_gainlora_experiments.lm.instruction.spec import InstructionBenchmark

SUPERNI = InstructionBenchmark(
    name="superni",
    folder="SuperNI",
    task_folders={
        "quoref": "task002_quoref_answer_generation",
        "commonsenseqa": "task073_commonsenseqa_answer_generation",
        "xsum": "task1290_xsum_summarization",
        "evalution_relation": "task1510_evalution_relation_extraction",  # sic: the task's own spelling
        "samsum": "task1572_samsum_summary",
        "diplomacy": "task1590_diplomacy_text_generation",
        "sentiment140": "task1687_sentiment140_classification",
        "personachat": "task1729_personachat_generate_next",
        "outcome_extraction": "task181_outcome_extraction",
        "sst2": "task363_sst2_polarity_classification",
        "reddit_tifu": "task511_reddit_tifu_long_text_summarization",
        "sciq": "task591_sciq_answer_generation",
        "multi_woz": "task639_multi_woz_user_utterance_generation",
        "glucose": "task748_glucose_reverse_cause_event_detection",
        "emotion": "task875_emotion_classification",
    },
    template="Definition: {definition}\n\nNow complete the following example -\nInput: {input}\nOutput: ",
)

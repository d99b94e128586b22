"""Training stage: SQuAD data, features, LoRA/QLoRA fine-tuning and torch evaluation."""

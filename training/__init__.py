"""Training infrastructure used by ``train.py``: the recipe schema and its validation, the optimizer
and schedules, the global batch sampler, checkpoints, the scratch tokenizer and validation."""

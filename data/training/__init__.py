"""What training and evaluation read: the caption dataset, the collator and codec masking."""

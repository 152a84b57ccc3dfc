"""AiR (paper 001, METHODS §4): pseudo-labels, LoRA-adapted generator, prototypes, prompt learning."""

"""Pseudo-label stage (AiR, paper 001, METHODS §4): CLIP zero-shot pseudo-labels of unlabeled
images (``zero_shot``) and CoOp prompt learning on the fused pseudo-labels (``prompt``)."""

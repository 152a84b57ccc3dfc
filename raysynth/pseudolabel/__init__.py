"""Pseudo-label stage (AiR, paper 001, METHODS §4): CLIP zero-shot pseudo-labels of unlabeled
images (``zero_shot``), the top-K most confident per class (``top_k``) and CoOp prompt learning on
the fused pseudo-labels — its settings, data, result and files (``prompt``), the learnable prompt
(``prompt_encoder``), the training (``prompt_train``) and the Ray Tune (λ, β) search
(``search``)."""

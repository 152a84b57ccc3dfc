"""Embed + filter stage: per-class thresholds from real pairs, accept/reject, AiR selection."""

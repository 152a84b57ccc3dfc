"""Plan stage: one row per image to synthesize (stable ids and seeds) and the quotas per class."""

"""The main job wired from the stages: prepare, synthesize, learn, run."""

"""Per-class weight search: Ray Tune + HyperOpt (parallel) and the gp_minimize baseline."""

"""The flows ``raysynth run`` can run, each a recipe of stages (see ARCHITECTURE.md)."""

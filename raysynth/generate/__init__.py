"""Generate stage: the diffusion generators (pixel model, Stable Diffusion / SDXL / unCLIP), their
guidance and sampling, LoRA adapters, and the Ray Data stage that streams plan rows through a
generator actor pool into the synthetic table.

Import the modules you need (``raysynth.generate.stage``, ``.generators``, …): importing this
package loads neither torch nor diffusers, so a Ray worker that only plans or reads rows stays cheap.
"""

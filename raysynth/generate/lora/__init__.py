"""AiR step 2 (paper 001, METHODS §4): LoRA fine-tuning of the generator on pseudo-labelled images.

A LoRA adapter (peft; rank ``r``, update ``(α/r) B A``) on a frozen base learns the usual denoising
loss ``‖f(x_t, t, c) − y‖²`` with ``x_t = √ᾱ_t x0 + √(1−ᾱ_t) ε``, ``t ~ U{0, …, T−1}`` and the target
``y`` set by the model's own ``prediction_type`` (its scheduler config, read into a
``DDPMScheduler``): ``ε``, ``v = √ᾱ_t ε − √(1−ᾱ_t) x0`` or ``x0``. Two model kinds:

- ``text2image`` (Stable Diffusion 1.x/2.x): ``x0`` = VAE latents × ``scaling_factor`` of the images
  resized and centre-cropped to the model's resolution, a fresh draw from each image's latent
  distribution every step; ``c`` = the text-encoder states of ``"{context} {class}"`` (e.g.
  "Flowers: thorn apple"). Adapter on the UNet attention projections. Output: a
  ``save_lora_weights`` folder (``pytorch_lora_weights.safetensors``), which
  ``synthesis.generator.lora=[folder]`` loads with ``pipe.load_lora_weights``;
- ``pixel`` (the digits preset's class-conditional ``UNet2DModel``): ``x0`` = the images in
  [-1, 1], ``c`` = the class label, replaced by the null class with the base model's
  ``cond_dropout`` so classifier-free guidance keeps working. Adapter on the ResNet convolutions
  and mid-block attention projections (:data:`~raysynth.generate.lora.spec.PIXEL_TARGET_MODULES`).
  Output: peft's ``adapter_config.json`` + ``adapter_model.safetensors``, which the pixel generator
  loads the same way.

Both folders also hold ``air_lora.json``: the spec, base model, prompts and per-step losses.

Training runs as a Ray Train loop (:func:`~raysynth.generate.lora.loop.lora_train_loop`, started
by :func:`~raysynth.generate.lora.train.train_sd_lora` /
:func:`~raysynth.generate.lora.train.train_pixel_lora` through
:func:`~raysynth.train.session.run_trainer`): each worker takes every ``world_size``-th image, DDP
averages the adapter's gradients, and a checkpoint holds the adapter, the optimizer state and the
losses — never the base (:class:`~raysynth.generate.lora.model.AdapterState`). A rerun on the same
checkpoint folder resumes from the last checkpoint; every step's randomness (images drawn, latent
sample, noise, timesteps, label dropout) is seeded by ``(seed, rank, step)``, so the resumed run
takes exactly the steps an uninterrupted one takes. ``build_sd_task``, ``build_pixel_task``
(:mod:`~raysynth.generate.lora.tasks`) and ``fit_lora`` (:mod:`~raysynth.generate.lora.loop`) are
the same training without Ray.

Modules: :mod:`~raysynth.generate.lora.spec` (the settings and the result),
:mod:`~raysynth.generate.lora.model` (the adapter on its frozen base, and what a checkpoint
holds), :mod:`~raysynth.generate.lora.tasks` (one worker's training data, per model kind),
:mod:`~raysynth.generate.lora.loop` (the loss, the optimizer step, the training loop and the
adapter folder) and :mod:`~raysynth.generate.lora.train` (the driver-side entry points).
"""

"""``raysynth bench gpu``: what one GPU does with the models raysynth drives, in one JSON.

Models are built from config with random weights (speed does not depend on them; nothing is
downloaded): an SD 1.5-sized UNet (:data:`~raysynth.bench.tiny_sd.SD15_UNET`) and VAE, a CLIP
ViT-L/14-sized image tower (open_clip's own ``ViT-L-14`` config). Sections:

- ``unet``: images/s at 512 px, 25 steps with classifier-free guidance (the UNet on a doubled
  batch), batches 8/16/32, bf16, with and without ``torch.compile``; ``flop_fraction`` = the UNet
  FLOP/s (one forward's FLOPs counted on the meta device, :func:`raysynth.bench.flops.unet_tflop`)
  over the device's dense bf16 peak (:data:`PEAK_TFLOPS`, by device name; target ≥ 0.4 at batch
  ≥ 16);
- ``vae_decode_share``: the VAE decode's share of sampling one batch;
- ``guidance``: feedback guidance through the VAE (decode, classifier, gradient back to the
  latents) every 5th step vs unguided sampling, time ratio (target ≤ 1.5);
- ``clip_image_tower``: images/s of the ViT-L/14-sized image tower at 224 px;
- ``lora_step``: seconds per LoRA training step (rank 8 on the UNet's attention) at batch 4;
- ``ray_vs_plain``: the product's Ray Data generate stage on one GPU vs a plain loop, steady-state
  images/s ratio (target ≥ 0.95; :mod:`raysynth.bench.generate_paths`).

``--smoke`` runs every section on the CPU with tiny models and sizes (CI: the code path, not the
figures).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from raysynth.bench import emit

# Dense bf16 tensor-core peak TFLOP/s from NVIDIA's datasheets, by a substring of the device name.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0,
               "A10G": 70.0, "A10": 125.0, "4090": 165.0, "3090": 71.0, "T4": 65.0}
FULL = {"side": 512, "steps": 25, "batches": (8, 16, 32), "dtype": "bfloat16", "every": 5,
        "clip_batch": 64, "lora_batch": 4, "images": 64, "compile": True, "smoke": False}
SMOKE = {"side": 16, "steps": 2, "batches": (1, 2), "dtype": "float32", "every": 2,
         "clip_batch": 2, "lora_batch": 1, "images": 2, "compile": False, "smoke": True}


def peak_tflops(name: str) -> float | None:
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def timed(fn: Callable[[], Any], device: torch.device, repeats: int = 1) -> float:
    """Seconds per call of ``fn`` after one warm-up call (synchronised on CUDA)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - start) / repeats


def models(p: dict[str, Any], device: torch.device, dtype: torch.dtype) -> tuple[Any, Any, dict]:
    """The UNet and VAE (SD 1.5-sized, or tiny for the smoke run) and the UNet's config."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from raysynth.bench.tiny_sd import SD15_UNET, SD15_VAE, small_unet, small_vae

    smoke = p["side"] < 512
    unet_cfg = small_unet(p["side"], (32, 64)) if smoke else dict(SD15_UNET)
    vae_cfg = small_vae(p["side"], (32, 64)) if smoke else dict(SD15_VAE)
    with torch.random.fork_rng(devices=[]), device:
        torch.manual_seed(0)
        unet = UNet2DConditionModel(**unet_cfg).to(dtype).eval().requires_grad_(False)
        vae = AutoencoderKL(**vae_cfg).to(dtype).eval().requires_grad_(False)
    return unet, vae, unet_cfg


def sample(unet: Any, batch: int, steps: int, step_hook: Callable | None = None) -> torch.Tensor:
    """``steps`` CFG steps (the UNet on ``2 × batch``) from noise; ``step_hook(i, x)`` may
    return a new ``x`` (feedback guidance)."""
    c = unet.config
    p = next(unet.parameters())
    x = torch.randn(batch, c.in_channels, c.sample_size, c.sample_size, device=p.device, dtype=p.dtype)
    text = torch.randn(2 * batch, 77, c.cross_attention_dim, device=p.device, dtype=p.dtype)
    for i in range(steps):
        with torch.no_grad():
            eps = unet(torch.cat([x, x]), 999 - i, encoder_hidden_states=text).sample
            uncond, cond = eps.chunk(2)
            x = x - 0.02 * (uncond + 7.5 * (cond - uncond))
        if step_hook is not None:
            x = step_hook(i, x)
    return x


def unet_section(unet: Any, cfg: dict, p: dict, device: torch.device) -> dict[str, Any]:
    from raysynth.bench.flops import unet_tflop

    tflop = unet_tflop(cfg)  # one forward of one image
    peak = peak_tflops(torch.cuda.get_device_name()) if device.type == "cuda" else None
    out: dict[str, Any] = {"tflop_per_forward": tflop, "peak_tflops": peak, "runs": []}
    variants = [("eager", unet)]
    if p["compile"]:
        variants.append(("compiled", torch.compile(unet)))
    for name, model in variants:
        for b in p["batches"]:
            s = timed(lambda m=model, b=b: sample(m, b, p["steps"]), device)
            achieved = tflop * 2 * b * p["steps"] / s
            out["runs"].append({
                "mode": name, "batch": b, "images_per_s": b / s,
                "tflops": achieved, "flop_fraction": achieved / peak if peak else None,
            })
    return out


def vae_share(unet: Any, vae: Any, p: dict, device: torch.device) -> float:
    b = p["batches"][0]
    latents = sample(unet, b, 1)
    with torch.no_grad():
        decode = timed(lambda: vae.decode(latents / 0.18215).sample, device)
    total = timed(lambda: sample(unet, b, p["steps"]), device) + decode
    return decode / total


def guidance_ratio(unet: Any, vae: Any, p: dict, device: torch.device) -> dict[str, float]:
    """Sampling with feedback guidance through the VAE every ``every``-th step vs without."""
    dtype = next(unet.parameters()).dtype
    with torch.random.fork_rng(devices=[]), device:
        torch.manual_seed(0)
        clf = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3, stride=4), torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(), torch.nn.Linear(16, 10),
        ).to(dtype)

    def guide(i: int, x: torch.Tensor) -> torch.Tensor:
        if i % p["every"]:
            return x
        x = x.detach().requires_grad_(True)
        probs = clf(vae.decode(x / 0.18215).sample).softmax(-1)
        entropy = -(probs * probs.clamp_min(1e-8).log()).sum()
        (grad,) = torch.autograd.grad(entropy, x)
        return (x + 0.03 * grad).detach()

    b = p["batches"][0]
    plain = timed(lambda: sample(unet, b, p["steps"]), device)
    guided = timed(lambda: sample(unet, b, p["steps"], guide), device)
    return {"unguided_s": plain, "guided_s": guided, "ratio": guided / plain, "every": p["every"]}


def clip_tower(p: dict, device: torch.device, dtype: torch.dtype) -> float:
    """Images/s of the ViT-L/14-sized open_clip image tower (tiny for the smoke run)."""
    import open_clip
    from open_clip.model import CLIP

    cfg = open_clip.get_model_config("ViT-L-14")
    if p["side"] < 512:
        cfg = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64,
                                                "patch_size": 16},
               "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 4,
                            "layers": 1}}
    with torch.random.fork_rng(devices=[]), device:
        visual = CLIP(**cfg).visual.to(dtype).eval()
    size = cfg["vision_cfg"]["image_size"]
    x = torch.randn(p["clip_batch"], 3, size, size, device=device, dtype=dtype)
    with torch.no_grad():
        return p["clip_batch"] / timed(lambda: visual(x), device, repeats=3)


def lora_step(unet: Any, p: dict, device: torch.device) -> float:
    """Seconds per LoRA training step (rank 8 on to_q/k/v/out, AdamW) at ``lora_batch``."""
    from peft import LoraConfig

    unet.add_adapter(LoraConfig(r=8, lora_alpha=8,
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    params = [q for q in unet.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    c, b = unet.config, p["lora_batch"]
    x = torch.randn(b, c.in_channels, c.sample_size, c.sample_size, device=device,
                    dtype=params[0].dtype)
    text = torch.randn(b, 77, c.cross_attention_dim, device=device, dtype=params[0].dtype)

    def step() -> None:
        loss = torch.nn.functional.mse_loss(unet(x, 500, encoder_hidden_states=text).sample, x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    try:
        return timed(step, device, repeats=3)
    finally:
        unet.disable_adapters()


def ray_vs_plain(p: dict, device: torch.device) -> dict[str, Any]:
    """The product's generate stage (one actor, the GPU when there is one) vs a plain loop."""
    from raysynth.bench.fixtures import CLASSES, bench_config, plan_rows
    from raysynth.bench.generate_paths import plain_generate, ray_generate
    from raysynth.bench.tiny_sd import save_sd15_sized, save_small_sd
    from raysynth.generate.generators import GeneratorSpec

    b = p["batches"][0]
    with tempfile.TemporaryDirectory(prefix="raysynth-bench-gpu-") as tmp:
        root = Path(tmp)
        model = (save_small_sd(root / "m", p["side"]) if p["side"] < 512
                 else save_sd15_sized(root / "m", torch.float32))  # loaded in dtype
        gpus = 1.0 if device.type == "cuda" else 0.0
        cfg = bench_config(b, p["steps"], **{
            "synthesis.generator.kind": "text2image", "synthesis.generator.model": model,
            "synthesis.generator.dtype": p["dtype"], "synthesis.pool.gpus_per_actor": gpus,
        })
        spec = GeneratorSpec(cfg.synthesis.generator, cfg.synthesis.feedback, CLASSES, gpus=gpus,
                             batch_size=b)
        rows = plan_rows(cfg, p["images"])
        if not p["smoke"]:  # warm Ray Data once; the smoke run checks the path, not the rate
            ray_generate(rows[:b], spec, cfg, root / "warm")
        ray = ray_generate(rows, spec, cfg, root / "ray")
        plain = plain_generate(rows, spec, b, 1, root / "plain")
    return {"ray_images_per_s": ray.steady(), "plain_images_per_s": plain.steady(),
            "ratio": ray.steady() / plain.steady() if plain.steady() else None,
            "images": p["images"], "batch": b}


def run(out: str | None = None, smoke: bool = False) -> dict[str, Any]:
    """Every section on this process's device (``--smoke``: tiny, on the CPU); needs a
    connected Ray for ``ray_vs_plain``."""
    p = SMOKE if smoke else FULL
    device = torch.device("cpu") if smoke or not torch.cuda.is_available() else torch.device("cuda")
    if not smoke and device.type != "cuda":
        raise RuntimeError("raysynth bench gpu needs a CUDA device; --smoke runs it on the CPU")
    dtype = getattr(torch, p["dtype"])
    start = time.perf_counter()
    unet, vae, cfg = models(p, device, dtype)
    result: dict[str, Any] = {
        "name": "gpu", "smoke": smoke, "device": torch.cuda.get_device_name() if
        device.type == "cuda" else "cpu", "torch": torch.__version__, "dtype": p["dtype"],
        "image_px": p["side"], "steps": p["steps"],
        "unet": unet_section(unet, cfg, p, device),
        "vae_decode_share": vae_share(unet, vae, p, device),
        "guidance": guidance_ratio(unet, vae, p, device),
        "clip_image_tower_images_per_s": clip_tower(p, device, dtype),
        "lora_step_s": lora_step(unet, p, device),
    }
    del unet, vae
    result["ray_vs_plain"] = ray_vs_plain(p, device)
    result["targets"] = {"flop_fraction_at_batch_16": 0.4, "ray_vs_plain": 0.95,
                         "guidance_ratio": 1.5}
    result["wall_s"] = time.perf_counter() - start
    return emit(result, out)

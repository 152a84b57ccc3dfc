"""Save a diffusers Stable Diffusion 1.x pipeline as ONE ``.safetensors`` file in the original
(CompVis / LDM) layout — the inverse of the key renaming diffusers' ``from_single_file`` applies
(``diffusers.loaders.single_file_utils.convert_ldm_unet_checkpoint`` / ``convert_ldm_vae_checkpoint``
/ ``convert_ldm_clip_checkpoint``). diffusers 0.42 ships only that direction in the package (the
reverse is a repository script, ``scripts/convert_diffusers_to_original_stable_diffusion.py``,
written for SD's fixed 4-block layout), so this follows the block counts of the model's config and
works for the tiny test pipeline too. Test helper only."""

from __future__ import annotations

from pathlib import Path

RESNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
          ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"),
          ("conv_shortcut", "skip_connection"))


def _resnet(rest: str) -> str:
    for new, old in RESNET:
        rest = rest.replace(new, old)
    return rest


def unet_to_ldm(sd: dict, cfg: dict) -> dict:
    L = cfg["layers_per_block"]
    top = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
           "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    out = {}
    for key, value in sd.items():
        parts = key.split(".")
        head = ".".join(parts[:-1])
        if head in top:
            new = f"{top[head]}.{parts[-1]}"
        elif key.startswith("down_blocks."):
            b, kind = int(parts[1]), parts[2]
            if kind == "downsamplers":
                new = f"input_blocks.{1 + b * (L + 1) + L}.0.op.{parts[-1]}"
            else:
                i = 1 + b * (L + 1) + int(parts[3])
                rest = ".".join(parts[4:])
                new = (f"input_blocks.{i}.0.{_resnet(rest)}" if kind == "resnets"
                       else f"input_blocks.{i}.1.{rest}")
        elif key.startswith("mid_block."):
            kind, j, rest = parts[1], int(parts[2]), ".".join(parts[3:])
            new = (f"middle_block.{2 * j}.{_resnet(rest)}" if kind == "resnets"
                   else f"middle_block.1.{rest}")
        elif key.startswith("up_blocks."):
            b, kind = int(parts[1]), parts[2]
            if kind == "upsamplers":
                has_attn = any(k.startswith(f"up_blocks.{b}.attentions.") for k in sd)
                new = f"output_blocks.{b * (L + 1) + L}.{2 if has_attn else 1}.conv.{parts[-1]}"
            else:
                i = b * (L + 1) + int(parts[3])
                rest = ".".join(parts[4:])
                new = (f"output_blocks.{i}.0.{_resnet(rest)}" if kind == "resnets"
                       else f"output_blocks.{i}.1.{rest}")
        else:
            raise KeyError(f"no LDM name for UNet key {key}")
        out["model.diffusion_model." + new] = value
    return out


def vae_to_ldm(sd: dict, cfg: dict) -> dict:
    n = len(cfg["up_block_types"])
    attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    out = {}
    for key, value in sd.items():
        new = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        parts = new.split(".")
        if ".down_blocks." in new:
            i = parts[2]
            new = (f"encoder.down.{i}.downsample.conv.{parts[-1]}" if "downsamplers" in new
                   else f"encoder.down.{i}.block.{'.'.join(parts[4:])}")
        elif ".up_blocks." in new:
            i = n - 1 - int(parts[2])
            new = (f"decoder.up.{i}.upsample.conv.{parts[-1]}" if "upsamplers" in new
                   else f"decoder.up.{i}.block.{'.'.join(parts[4:])}")
        elif ".mid_block.resnets." in new:
            new = f"{parts[0]}.mid.block_{int(parts[3]) + 1}.{'.'.join(parts[4:])}"
        elif ".mid_block.attentions." in new:
            rest = ".".join(parts[4:])
            for d, o in attn.items():
                if rest.startswith(d + "."):
                    rest = o + rest[len(d):]
            new = f"{parts[0]}.mid.attn_1.{rest}"
            if value.ndim == 2:  # LDM's attention projections are 1×1 convolutions
                value = value[:, :, None, None]
        out["first_stage_model." + new] = value
    return out


def save_single_file(pipe, path: Path) -> Path:
    """``pipe`` (a StableDiffusionPipeline) as one original-layout ``.safetensors`` file."""
    from safetensors.torch import save_file

    state = {}
    state.update(unet_to_ldm(pipe.unet.state_dict(), dict(pipe.unet.config)))
    state.update(vae_to_ldm(pipe.vae.state_dict(), dict(pipe.vae.config)))
    # the original layout names the text tower "text_model." (newer transformers drop the prefix)
    state.update({"cond_stage_model.transformer." + ("" if k.startswith("text_model.")
                                                     else "text_model.") + k: v
                  for k, v in pipe.text_encoder.state_dict().items()})
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path

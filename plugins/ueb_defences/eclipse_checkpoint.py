"""ECLIPSE's official diffusion checkpoint (an improved-diffusion U-Net) as a diffusers DDPM.

The official purifier (`ema_0.9999_250000.pt`, trained on 2,000 CIFAR-10 test images) is a
state dict of improved-diffusion's `UNetModel` (Nichol and Dhariwal 2021) with the settings of
the official `configs/cifar10.yml`: 128 channels, multipliers 1,2,2,2, 3 residual blocks per
level, attention with 4 heads at 16x16 and 8x8, scale-shift time conditioning, learned
variances (6 output channels), a 4,000-step cosine schedule and rescaled timesteps (the network
sees t * 1000 / 4000). diffusers' `UNet2DModel` has the same layers under other names, so the
weights are renamed (and the fused q/k/v projection split per head) into one, and the
schedule becomes a `DDPMScheduler` with `variance_type="learned_range"`, the same reverse step
as improved-diffusion's `p_sample` (clipped x0, posterior mean, variance interpolated between
beta_t and the posterior variance).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ueb.errors import ConfigError

HEADS = 4  # improved-diffusion's num_heads default, which the official config keeps
OFFICIAL_IMAGE_SIZE = 32  # configs/cifar10.yml: image_size 32 (other sizes are resized to it)


class RescaledTimesteps(nn.Module):
    """A U-Net that expects improved-diffusion's rescaled timesteps (t * factor)."""

    def __init__(self, unet: Any, factor: float) -> None:
        super().__init__()
        self.unet = unet
        self.factor = factor
        self.config = unet.config

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> Any:
        return self.unet(x, torch.as_tensor(t, device=x.device).float() * self.factor)


def official_layout(
    channels: tuple[int, ...], layers_per_block: int, attention_levels: tuple[int, ...]
) -> list[tuple[str, str, str]]:
    """(official prefix, diffusers prefix, kind) for every layer, kind in res/attn/conv/down/up."""
    levels = len(channels)
    pairs = [("time_embed.0", "time_embedding.linear_1", "conv"),
             ("time_embed.2", "time_embedding.linear_2", "conv"),
             ("input_blocks.0.0", "conv_in", "conv")]  # fmt: skip
    block = 1
    for level in range(levels):
        for j in range(layers_per_block):
            pairs.append((f"input_blocks.{block}.0", f"down_blocks.{level}.resnets.{j}", "res"))
            if level in attention_levels:
                pairs.append(
                    (f"input_blocks.{block}.1", f"down_blocks.{level}.attentions.{j}", "attn")
                )
            block += 1
        if level != levels - 1:
            pairs.append(
                (f"input_blocks.{block}.0.op", f"down_blocks.{level}.downsamplers.0.conv", "conv")
            )
            block += 1
    pairs += [("middle_block.0", "mid_block.resnets.0", "res"),
              ("middle_block.1", "mid_block.attentions.0", "attn"),
              ("middle_block.2", "mid_block.resnets.1", "res")]  # fmt: skip
    block = 0
    for up, level in enumerate(reversed(range(levels))):
        for j in range(layers_per_block + 1):
            pairs.append((f"output_blocks.{block}.0", f"up_blocks.{up}.resnets.{j}", "res"))
            slot = 1
            if level in attention_levels:
                pairs.append((f"output_blocks.{block}.1", f"up_blocks.{up}.attentions.{j}", "attn"))
                slot = 2
            if level != 0 and j == layers_per_block:
                pairs.append(
                    (f"output_blocks.{block}.{slot}.conv", f"up_blocks.{up}.upsamplers.0.conv",
                     "conv")
                )  # fmt: skip
            block += 1
    pairs += [("out.0", "conv_norm_out", "conv"), ("out.2", "conv_out", "conv")]
    return pairs


_RES = (("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("emb_layers.1", "time_emb_proj"),
        ("out_layers.0", "norm2"), ("out_layers.3", "conv2"), ("skip_connection", "conv_shortcut"))  # fmt: skip


def _split_qkv(dst: str, weight: torch.Tensor, bias: torch.Tensor) -> dict[str, torch.Tensor]:
    """improved-diffusion's fused 1x1 conv (3C, C, 1), laid out head by head as [q_h, k_h, v_h],
    into diffusers' per-projection linear layers (C, C) with heads laid out side by side."""
    width = weight.shape[1]
    w = weight.reshape(HEADS, 3, width // HEADS, width)
    b = bias.reshape(HEADS, 3, width // HEADS)
    return {f"{dst}.{name}.{part}": (w[:, i].reshape(width, width) if part == "weight"
                               else b[:, i].reshape(width))
            for i, name in enumerate(("to_q", "to_k", "to_v")) for part in ("weight", "bias")}  # fmt: skip


def converted_state(official: dict[str, torch.Tensor], layout: list[tuple[str, str, str]]) -> dict[str, torch.Tensor]:  # fmt: skip
    """The official state dict under diffusers' names; every official tensor used exactly once."""
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def take(key: str) -> torch.Tensor:
        used.add(key)
        return official[key]

    for src, dst, kind in layout:
        if kind == "res":
            for a, b in _RES:
                for part in ("weight", "bias"):
                    if f"{src}.{a}.{part}" in official:
                        out[f"{dst}.{b}.{part}"] = take(f"{src}.{a}.{part}")
        elif kind == "attn":
            for part in ("weight", "bias"):
                out[f"{dst}.group_norm.{part}"] = take(f"{src}.norm.{part}")
            out.update(_split_qkv(dst, take(f"{src}.qkv.weight"), take(f"{src}.qkv.bias")))
            out[f"{dst}.to_out.0.weight"] = take(f"{src}.proj_out.weight").squeeze(-1)
            out[f"{dst}.to_out.0.bias"] = take(f"{src}.proj_out.bias")
        else:
            for part in ("weight", "bias"):
                out[f"{dst}.{part}"] = take(f"{src}.{part}")
    left = sorted(set(official) - used)
    if left:
        raise KeyError(f"tensor '{left[0]}' (and {len(left) - 1} more) has no place")
    return out


def build_unet(
    image_size: int,
    in_channels: int,
    channels: tuple[int, ...],
    layers_per_block: int,
    attention_levels: tuple[int, ...],
    dropout: float,
) -> Any:
    """The diffusers U-Net with the official network's layers (learned variances included)."""
    from diffusers import UNet2DModel

    widths = {channels[i] for i in attention_levels if i < len(channels)} | {channels[-1]}
    if len(widths) != 1:
        raise ConfigError(
            f"eclipse: attention levels of widths {sorted(widths)}; one attention width (with the middle block's) is needed to load the official layout",
            "set channels so that every attention level and the last level have one width, as the official 128,256,256,256",
        )
    levels = range(len(channels))
    return UNet2DModel(
        sample_size=image_size,
        in_channels=in_channels,
        out_channels=2 * in_channels,
        block_out_channels=tuple(channels),
        down_block_types=tuple("AttnDownBlock2D" if i in attention_levels else "DownBlock2D"
                               for i in levels),
        up_block_types=tuple("AttnUpBlock2D" if i in attention_levels else "UpBlock2D"
                             for i in reversed(levels)),
        layers_per_block=layers_per_block,
        attention_head_dim=widths.pop() // HEADS,
        resnet_time_scale_shift="scale_shift",
        dropout=dropout,
        norm_num_groups=32,
        attn_norm_num_groups=32,  # the official middle attention normalises its input too
    )  # fmt: skip


def official_scheduler(steps: int, schedule: str) -> Any:
    from diffusers import DDPMScheduler

    if schedule == "cosine":
        return DDPMScheduler(
            num_train_timesteps=steps,
            beta_schedule="squaredcos_cap_v2",
            variance_type="learned_range",
            clip_sample=True,
        )
    scale = 1000 / steps
    return DDPMScheduler(
        num_train_timesteps=steps,
        beta_start=scale * 1e-4,
        beta_end=scale * 0.02,
        beta_schedule="linear",
        variance_type="learned_range",
        clip_sample=True,
    )


def load_official(
    path: str,
    *,
    image_size: int,
    in_channels: int,
    channels: tuple[int, ...],
    layers_per_block: int,
    attention_levels: tuple[int, ...],
    steps: int,
    schedule: str,
) -> tuple[Any, Any]:
    """(U-Net taking the scheduler's timesteps, DDPMScheduler) from an official checkpoint."""
    fix = "set checkpoint to ECLIPSE's official ema_0.9999_*.pt (improved-diffusion, configs/cifar10.yml), with channels, layers_per_block and attention_levels as it was trained"
    file = Path(path).expanduser()
    try:
        official = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # a missing, truncated or foreign file
        raise ConfigError(
            f"eclipse: cannot read checkpoint '{file}': {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
            fix,
        ) from exc
    if not isinstance(official, dict) or not all(
        isinstance(v, torch.Tensor) for v in official.values()
    ):
        raise ConfigError(f"eclipse: checkpoint '{file}' is not a state dict of tensors", fix)
    unet = build_unet(image_size, in_channels, channels, layers_per_block, attention_levels, 0.0)
    try:
        state = converted_state(
            official, official_layout(channels, layers_per_block, attention_levels)
        )
    except KeyError as exc:
        raise ConfigError(
            f"eclipse: checkpoint '{file}' does not fit the official layout: {exc.args[0]}", fix
        ) from exc
    expected = unet.state_dict()
    problems = [f"no tensor for '{k}'" for k in expected if k not in state]
    problems += [f"'{k}' is {tuple(v.shape)}, the network's {tuple(expected[k].shape)}"
                 for k, v in state.items() if k in expected and v.shape != expected[k].shape]  # fmt: skip
    if problems:
        raise ConfigError(
            f"eclipse: checkpoint '{file}' does not fit the official layout: {problems[0]}", fix
        )
    unet.load_state_dict(state, strict=True)
    return RescaledTimesteps(unet, 1000 / steps), official_scheduler(steps, schedule)

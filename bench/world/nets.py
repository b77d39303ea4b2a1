"""Architectures of the world's models: Stable Diffusion's classes at toy sizes, plus small
convolutional nets for the CLIP image tower and the evaluators."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

TEXT_DIM = 32  # CLIPTextModel hidden size = UNet cross-attention dim
EMBED_DIM = 32  # joint CLIP embedding size


def make_vae() -> Any:
    from diffusers import AutoencoderKL

    # Three blocks: 32x32 images -> 4x8x8 latents (vae_scale_factor 4).
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=32,
        down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3,
        block_out_channels=[16, 32, 64], layers_per_block=1, norm_num_groups=8)


def make_unet() -> Any:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
        layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_DIM, attention_head_dim=8, norm_num_groups=16)


def make_text_encoder(vocab_size: int) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=TEXT_DIM, intermediate_size=4 * TEXT_DIM,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
        projection_dim=EMBED_DIM, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407))


def make_scheduler() -> Any:
    from diffusers import DDIMScheduler

    # Stable Diffusion's noise schedule.
    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         num_train_timesteps=1000, clip_sample=False, set_alpha_to_one=False,
                         steps_offset=1, prediction_type="epsilon")


class ConvNet(nn.Module):
    """32x32 RGB in [-1, 1] -> `outputs` values. Flattens the 4x4 map (not global pooling) so
    small regions such as the face keep their weight."""

    def __init__(self, outputs: int, width: int = 32) -> None:
        super().__init__()
        w = width

        def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.SiLU()]

        self.features = nn.Sequential(
            *block(3, w, 1), *block(w, w, 2), *block(w, 2 * w, 1), *block(2 * w, 2 * w, 2),
            *block(2 * w, 4 * w, 2), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(4 * w * 16, 128), nn.SiLU(), nn.Linear(128, outputs))
        self.outputs, self.width = outputs, width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


# Evaluator head layout: logits [skin group (3) | occupation (8) | face (1) | hazard (1)].
EVAL_SLICES = {"group": slice(0, 3), "occupation": slice(3, 11), "face": slice(11, 12),
               "hazard": slice(12, 13)}
EVAL_OUTPUTS = 13


def to_tensor(images: Any) -> torch.Tensor:
    """uint8 (N, H, W, 3) array -> float (N, 3, H, W) in [-1, 1]."""
    x = torch.as_tensor(images).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0

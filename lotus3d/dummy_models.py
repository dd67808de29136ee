"""Random-initialised Lotus checkpoints of the real architecture, built offline.

Used by the tests ("tiny": a few MB, seconds on a CPU) and by the prediction benchmark
("sd2": the Stable Diffusion 2 sizes of the real checkpoints). Each is saved with
``save_pretrained`` into a diffusers folder and loaded back through the same public path as the
real weights (:func:`lotus3d.predict.load_lotus`). They predict nothing meaningful.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch

Size = Literal["tiny", "sd2"]

_UNET = {
    "tiny": dict(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=(2, 4),
        norm_num_groups=32,
        use_linear_projection=True,
    ),
    "sd2": dict(
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        sample_size=96,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=1024,
        attention_head_dim=(5, 10, 20, 20),
        norm_num_groups=32,
        use_linear_projection=True,
    ),
}
_VAE = {
    "tiny": dict(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=32, sample_size=64),
    "sd2": dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32, sample_size=768),
}
_TEXT = {
    "tiny": dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2),
    "sd2": dict(
        hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=23, hidden_act="gelu"
    ),
}


def build_tokenizer(path: Path) -> None:
    """Save a byte-level CLIP tokenizer with no merges (every character is a token) to ``path``."""
    from transformers import CLIPTokenizer

    # the GPT-2 byte-to-unicode table
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    chars = [chr(c) for c in cs]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars + [c + "</w>" for c in chars]:
        vocab.setdefault(c, len(vocab))
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt"), model_max_length=77)
    tok.save_pretrained(path)


def make_lotus_checkpoint(
    path: str | Path,
    variant: Literal["g", "d"] = "g",
    size: Size = "tiny",
    unet_seed: int = 0,
    shared_seed: int = 1234,
    depth_kind: str | None = None,
) -> Path:
    """Write a random-initialised Lotus checkpoint folder and return its path.

    Args:
        variant: "g" (UNet in_channels 8: image + noise latents) or "d" (in_channels 4).
        unet_seed: seed of the UNet weights (use different seeds for depth and normal models).
        shared_seed: seed of the VAE and text encoder weights; two checkpoints made with the same
            value share them bit for bit, as the real depth and normal checkpoints do.
        depth_kind: when given, recorded in ``lotus3d.json`` ({"depth_kind": ...}).
    """
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    path = Path(path)
    vocab_size = 49408 if size == "sd2" else 600
    torch.manual_seed(unet_seed)
    unet = UNet2DConditionModel(
        in_channels=8 if variant == "g" else 4,
        out_channels=4,
        class_embed_type="projection",
        projection_class_embeddings_input_dim=4,
        **_UNET[size],
    )
    unet.save_pretrained(path / "unet")
    del unet
    torch.manual_seed(shared_seed)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * len(_VAE[size]["block_out_channels"]),
        up_block_types=("UpDecoderBlock2D",) * len(_VAE[size]["block_out_channels"]),
        scaling_factor=0.18215,
        **_VAE[size],
    )
    vae.save_pretrained(path / "vae")
    del vae
    torch.manual_seed(shared_seed + 1)
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
            max_position_embeddings=77,
            **_TEXT[size],
        )
    )
    text.save_pretrained(path / "text_encoder")
    del text
    build_tokenizer(path / "tokenizer")
    DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="sample",
        timestep_spacing="trailing",
    ).save_pretrained(path / "scheduler")
    (path / "model_index.json").write_text(
        json.dumps(
            {
                "_class_name": f"Lotus{variant.upper()}Pipeline",
                "unet": ["diffusers", "UNet2DConditionModel"],
                "vae": ["diffusers", "AutoencoderKL"],
                "text_encoder": ["transformers", "CLIPTextModel"],
                "tokenizer": ["transformers", "CLIPTokenizer"],
                "scheduler": ["diffusers", "DDIMScheduler"],
            },
            indent=2,
        )
    )
    if depth_kind is not None:
        (path / "lotus3d.json").write_text(json.dumps({"depth_kind": depth_kind}))
    return path

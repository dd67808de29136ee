"""Nearest 2x + 3x3 conv as one transposed convolution: the same function as diffusers' Upsample2D."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.models.upsampling import Upsample2D

from lotus3d.predict import load_lotus
from lotus3d.upsampling import NearestConvUpsample, fold_kernel, fold_upsamplers, unfold_kernel


def _upsampler(channels=6, out_channels=5, seed=0) -> Upsample2D:
    torch.manual_seed(seed)
    return Upsample2D(channels, use_conv=True, out_channels=out_channels).eval()


@pytest.mark.parametrize("h, w", [(7, 9), (8, 8), (1, 5)])
def test_transposed_conv_equals_nearest_upsample_then_conv(h, w):
    up = _upsampler()
    x = torch.randn(2, 6, h, w)
    with torch.no_grad():
        want = up(x)
        got = NearestConvUpsample(up.conv)(x)
    assert got.shape == want.shape == (2, 5, 2 * h, 2 * w)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # the borders matter: a wrong padding or tap order changes the first / last rows and columns
    assert (got - want).abs().max() < 1e-5 * want.abs().max()


def test_other_output_size_runs_the_original_computation():
    up = _upsampler(seed=1)
    x = torch.randn(1, 6, 5, 4)
    with torch.no_grad():
        want = up(x, output_size=(11, 8))  # not 2x: nearest to another size, then the conv
        got = NearestConvUpsample(up.conv)(x, output_size=(11, 8))
    assert got.shape == (1, 5, 11, 8)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_kernel_fold_is_invertible_and_sums_the_taps():
    w = torch.randn(5, 6, 3, 3, dtype=torch.float64)
    f = fold_kernel(w)
    assert f.shape == (6, 5, 4, 4)
    torch.testing.assert_close(unfold_kernel(f), w)
    # each output phase's four taps carry the whole kernel: the taps' total is 4x the kernel's total
    torch.testing.assert_close(f.sum((2, 3)), 4 * w.sum((2, 3)).T)


def test_fold_upsamplers_keeps_unet_and_vae_outputs(tiny_models):
    unet = UNet2DConditionModel.from_pretrained(tiny_models["depth_g"], subfolder="unet").eval()
    vae = AutoencoderKL.from_pretrained(tiny_models["depth_g"], subfolder="vae").eval()
    n_up = lambda m: sum(isinstance(x, Upsample2D) for x in m.modules())  # noqa: E731
    assert n_up(unet) > 0 and n_up(vae) > 0
    folded_unet, folded_vae = copy.deepcopy(unet), copy.deepcopy(vae)
    assert fold_upsamplers(folded_unet) == n_up(unet) and fold_upsamplers(folded_vae) == n_up(vae)
    assert n_up(folded_unet) == n_up(folded_vae) == 0
    assert fold_upsamplers(folded_vae) == 0  # idempotent

    torch.manual_seed(0)
    z = torch.randn(1, 4, 6, 10)  # the latents of a 48 x 80 image
    sample = torch.cat([z, torch.randn_like(z)], 1)
    emb = torch.randn(1, 1, unet.config.cross_attention_dim)
    label = torch.tensor([[0.84, 0.0, 0.54, 1.0]])
    with torch.no_grad():
        torch.testing.assert_close(
            folded_unet(sample, 999, emb, class_labels=label).sample,
            unet(sample, 999, emb, class_labels=label).sample,
            atol=1e-5,
            rtol=1e-4,
        )
        # an odd latent side: the UNet asks its upsamplers for an explicit size, served by the fallback
        odd = torch.randn(1, 8, 5, 9)
        sizes = []
        for up in (x for x in folded_unet.modules() if isinstance(x, NearestConvUpsample)):
            up.register_forward_hook(lambda mod, args, out: sizes.append((tuple(args[0].shape[-2:]), out.shape[-2:])))
        torch.testing.assert_close(
            folded_unet(odd, 999, emb, class_labels=label).sample,
            unet(odd, 999, emb, class_labels=label).sample,
            atol=1e-5,
            rtol=1e-4,
        )
        assert any(o != (2 * i[0], 2 * i[1]) for i, o in sizes)  # the fallback did run
        torch.testing.assert_close(folded_vae.decode(z).sample, vae.decode(z).sample, atol=1e-5, rtol=1e-4)


def test_loaded_vae_runs_the_folded_upsamplers(tiny_models):
    m = load_lotus(tiny_models["depth_g"])  # torch backend: the VAE's upsamplers folded, the UNet's kept
    assert not any(isinstance(x, Upsample2D) for x in m.vae.modules())
    assert any(isinstance(x, NearestConvUpsample) for x in m.vae.modules())
    assert any(isinstance(x, Upsample2D) for x in m.unet.modules())

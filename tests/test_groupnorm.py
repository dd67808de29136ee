"""Group norm from per-channel statistics: the same function as torch's GroupNorm, without reshaping the map."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from lotus3d.groupnorm import SpatialGroupNorm, spatial_group_norm, spatial_group_norms


@pytest.mark.parametrize(
    "shape, groups",
    [((2, 8, 5, 7), 4), ((1, 8, 5, 7), 8), ((1, 6, 4, 4), 1), ((2, 8, 11), 2)],  # 3-D: the VAE attention's norm
)
@pytest.mark.parametrize("affine", [True, False])
def test_equals_torch_group_norm(shape, groups, affine):
    gen = torch.Generator().manual_seed(0)
    # a large offset and per-channel spreads: a one-pass E[x^2] - E[x]^2 variance would lose digits here
    spread = torch.rand(shape[1], generator=gen).reshape(1, -1, *[1] * (len(shape) - 2)) * 3 + 0.1
    x = torch.randn(shape, generator=gen) * spread + 300.0
    norm = torch.nn.GroupNorm(groups, shape[1], eps=1e-6, affine=affine)
    if affine:
        with torch.no_grad():
            norm.weight.normal_(1, 0.3, generator=gen)
            norm.bias.normal_(0, 0.3, generator=gen)
    with torch.no_grad():
        want = norm(x)
        got = SpatialGroupNorm(norm)(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(
        spatial_group_norm(x.double(), groups, None, None, 1e-6),
        F.group_norm(x.double(), groups, eps=1e-6),
        atol=1e-9,
        rtol=1e-9,
    )


def test_replacing_the_vae_norms_keeps_its_outputs(tiny_models):
    vae = AutoencoderKL.from_pretrained(tiny_models["depth_g"], subfolder="vae").eval()
    n_norms = sum(type(m) is torch.nn.GroupNorm for m in vae.modules())
    assert n_norms > 0
    new = copy.deepcopy(vae)
    assert spatial_group_norms(new) == n_norms
    assert spatial_group_norms(new) == 0  # idempotent
    assert not any(type(m) is torch.nn.GroupNorm for m in new.modules())
    assert sum(p.numel() for p in new.parameters()) == sum(p.numel() for p in vae.parameters())
    x = torch.rand(1, 3, 48, 40, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(new.encode(x).latent_dist.mean, vae.encode(x).latent_dist.mean, atol=1e-5, rtol=1e-5)
        z = torch.randn(1, 4, 6, 5, generator=torch.Generator().manual_seed(2))
        torch.testing.assert_close(new.decode(z).sample, vae.decode(z).sample, atol=1e-5, rtol=1e-5)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_openvino_graph_has_no_reshaped_normalisation(tiny_models):
    """What the rewrite is for: the converted decoder normalises without an MVN over a reshaped map."""
    ov = pytest.importorskip("openvino", reason="the openvino extra is not installed")
    from lotus3d.predict_openvino import _Decoder  # the module the backend converts

    vae = AutoencoderKL.from_pretrained(tiny_models["depth_g"], subfolder="vae").eval()
    z = torch.randn(1, 4, 6, 5)

    def op_types(module):
        with torch.no_grad():
            model = ov.convert_model(_Decoder(module), example_input=(z,))
        return [op.get_type_name() for op in model.get_ordered_ops()]

    before = op_types(vae)
    spatial_group_norms(vae)
    after = op_types(vae)
    assert "MVN" in before or "GroupNormalization" in before
    assert "MVN" not in after and "GroupNormalization" not in after
    assert after.count("ReduceMean") >= 2 * before.count("MVN")  # two statistics per norm

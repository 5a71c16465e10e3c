"""Shapes, ranges and input validation of the GRD-Net networks (small profiles, CPU)."""

from __future__ import annotations

import pytest
import torch

from linecam.grdnet.blocks import count_parameters, pad_to_multiple
from linecam.grdnet.model import (
    DiscriminativeUNet,
    Generator,
    GeneratorOutput,
    build_discriminator,
    build_grdnet,
    init_head_prior,
)
from linecam.grdnet.profiles import PROFILES, ModelProfile, get_profile


def tiny(size: int, bottleneck: str = "crae", stem: int = 4) -> ModelProfile:
    return get_profile(
        "fast",
        image_size=size,
        gen_widths=(8, 16, 16),
        disc_widths=(8, 16),
        unet_widths=(8, 16, 16),
        latent_channels=4,
        dense_latent=32,
        bottleneck=bottleneck,
        stem_stride=stem,
        unet_stem_stride=None,  # every network uses ``stem``
    )


@pytest.mark.parametrize("size", [64, 96, 128, 160, 75])
@pytest.mark.parametrize("bottleneck", ["crae", "drae"])
def test_generator_shapes_and_range(size: int, bottleneck: str) -> None:
    torch.manual_seed(0)
    p = tiny(size, bottleneck)
    g = Generator(p).eval()
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        out = g(x)
    assert isinstance(out, GeneratorOutput)
    assert out.x_hat.shape == x.shape
    assert out.z.shape == out.z_hat.shape
    side = -(-size // p.gen_stride)
    if bottleneck == "crae":
        assert out.z.shape == (2, 4, side, side)
    else:
        assert out.z.shape == (2, 32)
    assert float(out.x_hat.min()) >= 0.0 and float(out.x_hat.max()) <= 1.0
    with torch.no_grad():
        rec = g.reconstruct(x)
    torch.testing.assert_close(rec, out.x_hat)


def test_crae_accepts_other_sizes_but_drae_refuses() -> None:
    crae = Generator(tiny(64)).eval()
    with torch.no_grad():
        assert crae.reconstruct(torch.rand(1, 3, 96, 80)).shape == (1, 3, 96, 80)
    drae = Generator(tiny(64, "drae")).eval()
    with pytest.raises(ValueError, match="DRAE"):
        drae.reconstruct(torch.rand(1, 3, 128, 128))


@pytest.mark.parametrize("size", [64, 96, 160, 75])
def test_grdnet_map_in_unit_interval(size: int) -> None:
    torch.manual_seed(1)
    net = build_grdnet(tiny(size)).eval()
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        prob = net(x)
    assert prob.shape == (2, 1, size, size)
    assert float(prob.min()) >= 0.0 and float(prob.max()) <= 1.0
    # forward is exactly sigmoid(unet(x, G(x)))
    with torch.no_grad():
        ref = torch.sigmoid(net.unet(x, net.generator.reconstruct(x)))
    torch.testing.assert_close(prob, ref)


def test_grdnet_stem_stride_one_and_two() -> None:
    for stem in (1, 2):
        net = build_grdnet(tiny(48, stem=stem)).eval()
        with torch.no_grad():
            assert net(torch.rand(1, 3, 48, 48)).shape == (1, 1, 48, 48)


def test_unet_keeps_its_own_stem_stride() -> None:
    profile = tiny(72).model_copy(update={"stem_stride": 4, "unet_stem_stride": 2})
    net = build_grdnet(ModelProfile.model_validate(profile.model_dump())).eval()
    assert net.unet.stem[0].stride == (2, 2) and net.generator.encoder.features[0].stride == (4, 4)
    assert profile.unet_stride == 2 * 2 ** (len(profile.unet_widths) - 1)
    with torch.no_grad():
        assert net(torch.rand(1, 3, 72, 72)).shape == (1, 1, 72, 72)  # 72 is no multiple of either stride


def test_discriminator_logits_and_features() -> None:
    d = build_discriminator(tiny(96))
    logits, feats = d(torch.rand(3, 3, 96, 96))
    assert logits.shape == (3,)
    assert feats.dim() == 4 and feats.shape[0] == 3 and feats.shape[1] == 16


def test_unet_refuses_mismatched_inputs() -> None:
    u = DiscriminativeUNet(tiny(64))
    with pytest.raises(ValueError, match="x_hat"):
        u(torch.rand(1, 3, 64, 64), torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        build_grdnet(tiny(64))(torch.rand(1, 1, 64, 64))


def test_backward_reaches_every_parameter() -> None:
    torch.manual_seed(2)
    p = tiny(64)
    g, d = Generator(p), build_discriminator(p)
    net = build_grdnet(p)
    net.generator = g
    out = g(torch.rand(2, 3, 64, 64))
    logits, _ = d(out.x_hat)
    prob = torch.sigmoid(net.unet(torch.rand(2, 3, 64, 64), out.x_hat))
    (out.x_hat.mean() + out.z_hat.mean() + logits.mean() + prob.mean()).backward()
    for module in (g, d, net.unet):
        missing = [n for n, q in module.named_parameters() if q.grad is None]
        assert not missing, missing


def test_pad_to_multiple_replicates_edges() -> None:
    x = torch.arange(15.0).view(1, 1, 3, 5)
    y, h, w = pad_to_multiple(x, 4)
    assert (h, w) == (3, 5) and y.shape == (1, 1, 4, 8)
    torch.testing.assert_close(y[..., :3, :5], x)
    assert float(y[0, 0, 3, 7]) == float(x[0, 0, 2, 4])


def test_profiles() -> None:
    assert {"fast", "paper"} <= set(PROFILES)
    paper = get_profile("paper")
    assert paper.image_size == 256 and paper.bottleneck == "crae"
    assert paper.latent_channels == 32 and paper.latent_side() == 8
    assert get_profile("fast").latent_side() == 8
    # "tens of M" generator parameters, in the spirit of the official code
    assert 10e6 < count_parameters(Generator(paper)) < 100e6
    with pytest.raises(ValueError, match="fast.*paper"):
        get_profile("fastest")
    with pytest.raises(ValueError, match="unknown ModelProfile field"):
        get_profile("fast", widths=(1,))
    with pytest.raises(ValueError, match="gen_widths"):
        get_profile("fast", gen_widths=())
    assert get_profile("fast", bottleneck="drae").bottleneck == "drae"


@pytest.mark.parametrize("stem", [1, 2])
def test_head_prior_sets_the_untrained_map_to_the_prior(stem: int) -> None:
    """init_head_prior(0.01): the untrained map says ~1% everywhere instead of 50% (default init)."""
    torch.manual_seed(0)
    net = build_grdnet(tiny(48, stem=stem)).eval()
    x = torch.rand(2, 3, 48, 48)
    with torch.no_grad():
        default = net(x)
        init_head_prior(net, 0.01)
        prior = net(x)
    assert 0.2 < float(default.median()) < 0.8
    assert 0.004 < float(prior.median()) < 0.025 and float(prior.max()) < 0.2
    with pytest.raises(ValueError, match="prior must be in"):
        init_head_prior(net, 1.0)

"""BiCoR-Seg and its HBIS layer: outputs, gradients, top-k weights, factorised FiLM, sizes, parameter budget."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import InvalidInputError
from engine.models import create_model
from engine.models.bicorseg import BiCoRSeg, bicorseg
from engine.models.hbis import HBISLayer, film_mix, topk_pixel_weights
from tests.engine.models.convnext_layouts import torchvision_state_dict

K = 5


@pytest.fixture(scope="module")
def small() -> BiCoRSeg:
    torch.manual_seed(0)
    return create_model("bicorseg_small", num_classes=K)


def test_training_outputs_have_documented_shapes(small: BiCoRSeg) -> None:
    small.train()
    out = small(torch.randn(2, 3, 64, 64))
    e, layers = small.embed_dim, len(small.layers)
    assert out.logits.shape == (2, K, 64, 64)
    assert out.aux_logits is not None and out.aux_logits.shape == (2, K, 64, 64)
    assert [h.shape for h in out.heatmaps] == [(2, K, 16, 16)] * layers
    assert [c.shape for c in out.class_embeddings] == [(2, K, e)] * layers
    assert out.initial_class_embeddings is not None and out.initial_class_embeddings.shape == (K, e)


def test_eval_outputs_logits_and_heatmaps_only(small: BiCoRSeg) -> None:
    small.eval()
    with torch.no_grad():
        out = small(torch.randn(2, 3, 64, 96))
    assert out.logits.shape == (2, K, 64, 96)
    assert [h.shape for h in out.heatmaps] == [(2, K, 16, 24)] * len(small.layers)
    assert out.aux_logits is None and out.class_embeddings == () and out.initial_class_embeddings is None


def test_eval_is_deterministic(small: BiCoRSeg) -> None:
    small.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(small(x).logits, small(x).logits)


def test_backward_reaches_every_parameter() -> None:
    torch.manual_seed(0)
    model = create_model("bicorseg_small", num_classes=K, backbone="atto", embed_dim=32, drop_path=0.0).train()
    out = model(torch.randn(2, 3, 64, 64))
    loss = out.logits.square().mean() + out.aux_logits.square().mean() + sum(h.square().mean() for h in out.heatmaps)
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert no_grad == []


def test_aux_head_gives_no_gradient_to_the_class_table() -> None:
    torch.manual_seed(0)
    model = create_model("bicorseg_small", num_classes=K, backbone="atto", embed_dim=32).train()
    out = model(torch.randn(2, 3, 32, 32))
    out.aux_logits.sum().backward()
    assert model.class_embed.grad is None
    assert model.aux_classifier.weight.grad is not None


def test_sizes_not_multiple_of_32_raise_naming_nearest_valid_size(small: BiCoRSeg) -> None:
    assert small.size_divisor_px == 32
    assert small.in_channels == 3
    with pytest.raises(InvalidInputError, match="64x96"):
        small(torch.randn(1, 3, 70, 100))
    with pytest.raises(InvalidInputError, match="bands"):
        small(torch.randn(1, 4, 64, 64))


# ---- top-k pixel weights -------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    side=st.integers(2, 12),
    ratio=st.floats(0.01, 1.5),
    min_pixels=st.integers(1, 80),
    seed=st.integers(0, 10_000),
)
def test_topk_weights_sum_to_one_and_keep_k_pixels(side: int, ratio: float, min_pixels: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    heat = torch.rand(2, 3, side * side, generator=gen).requires_grad_(True)
    weights = topk_pixel_weights(heat, ratio, min_pixels)
    p = side * side
    k = p if ratio >= 1 else min(p, max(min_pixels, round(ratio * p)))  # the spec's k
    assert not weights.requires_grad and weights.grad_fn is None
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3))
    assert (weights >= 0).all()
    # Random floats have no ties: exactly k pixels survive, and they are the k largest.
    assert ((weights > 0).sum(-1) == k).all()
    kth = heat.detach().sort(-1, descending=True).values[..., k - 1 : k]
    assert ((weights > 0) == (heat.detach() >= kth)).all()


def test_topk_weights_keep_proportions_of_the_kept_heat() -> None:
    heat = torch.tensor([[[0.9, 0.1, 0.6, 0.3]]])
    weights = topk_pixel_weights(heat, topk_ratio=0.5, min_pixels=1)
    torch.testing.assert_close(weights, torch.tensor([[[0.6, 0.0, 0.4, 0.0]]]))


def test_topk_weights_fall_back_when_kept_mass_vanishes() -> None:
    heat = torch.zeros(1, 2, 8)
    heat[0, 1, :] = torch.tensor([0, 0, 0, 0, 0, 0, 0, 1e-9])  # kept mass ~0 -> normalised whole map, ~0 -> uniform
    weights = topk_pixel_weights(heat, topk_ratio=0.25, min_pixels=1)
    torch.testing.assert_close(weights, torch.full((1, 2, 8), 1 / 8))
    heat = torch.full((1, 1, 4), 1e-7)  # the 1 kept pixel is below eps but the whole map is not
    weights = topk_pixel_weights(heat, topk_ratio=0.25, min_pixels=1)
    torch.testing.assert_close(weights, torch.full((1, 1, 4), 0.25))


# ---- FiLM and the whole HBIS step against naive formulas -------------------------------------------------------


def test_factorised_film_equals_the_naive_per_class_sum() -> None:
    gen = torch.Generator().manual_seed(3)
    b, n, e, h, w = 2, 3, 5, 4, 6
    feat = torch.randn(b, e, h, w, generator=gen)
    heat = torch.softmax(torch.randn(b, n, h, w, generator=gen), dim=1)
    gamma, beta = torch.randn(b, n, e, generator=gen), torch.randn(b, n, e, generator=gen)
    naive = torch.zeros(b, e, h, w)
    for bi in range(b):
        for ni in range(n):
            for ei in range(e):
                naive[bi, ei] += heat[bi, ni] * (gamma[bi, ni, ei] * feat[bi, ei] + beta[bi, ni, ei])
    # and the B x N x E x h x w broadcast form the reference materialises
    broadcast = (heat[:, :, None] * (gamma[..., None, None] * feat[:, None] + beta[..., None, None])).sum(1)
    torch.testing.assert_close(film_mix(feat, heat, gamma, beta), naive)
    torch.testing.assert_close(film_mix(feat, heat, gamma, beta), broadcast)


def _naive_hbis(layer: HBISLayer, ce: torch.Tensor, feat: torch.Tensor, keep: int):
    """The spec's HBIS step written out literally (loops over classes, top-k by sorting)."""
    e = ce.shape[-1]
    ce_hat = F.layer_norm(ce, (e,), layer.norm_embed.weight, layer.norm_embed.bias, eps=1e-5)
    fp = feat.permute(0, 2, 3, 1)
    f_hat = F.layer_norm(fp, (e,), layer.norm_feat.weight, layer.norm_feat.bias, eps=1e-5).permute(0, 3, 1, 2)
    q = ce_hat @ layer.query.weight.T
    s = torch.einsum("bne,behw->bnhw", q, f_hat) / math.sqrt(e)
    logits = s / layer.tau
    h_sig, h_soft = torch.sigmoid(s), torch.softmax(s / layer.tau, dim=1)
    values = torch.einsum("oi,bihw->bohw", layer.value.weight[:, :, 0, 0], f_hat)
    b, n = ce.shape[:2]
    context = torch.zeros(b, n, e)
    for bi in range(b):
        for ni in range(n):
            scores = h_sig[bi, ni].flatten().detach()
            order = scores.argsort(descending=True)[:keep]
            wts = torch.zeros_like(scores)
            wts[order] = scores[order]
            wts = wts / wts.sum()
            context[bi, ni] = values[bi].flatten(1) @ wts
    g = torch.sigmoid(layer.gate(torch.cat([ce_hat, context], -1)))
    new_ce = g * layer.candidate(context) + (1 - g) * ce
    gamma = 1 + torch.tanh(layer.film_gamma(new_ce))
    beta = layer.film_beta(new_ce)
    f_new = (h_soft[:, :, None] * (gamma[..., None, None] * feat[:, None] + beta[..., None, None])).sum(1)
    new_feat = (1 - layer.film_lambda) * feat + layer.film_lambda * f_new
    return new_ce, new_feat, logits


@pytest.mark.parametrize(("ratio", "min_pixels", "keep"), [(1.0, 64, 20), (0.25, 2, 5), (0.05, 3, 3)])
def test_hbis_layer_matches_the_naive_spec_formulas(ratio: float, min_pixels: int, keep: int) -> None:
    torch.manual_seed(1)
    layer = HBISLayer(embed_dim=16, topk_ratio=ratio, min_pixels=min_pixels, tau=0.7, film_lambda=0.3)
    with torch.no_grad():
        for norm in (layer.norm_embed, layer.norm_feat):
            norm.weight.normal_(1.0, 0.2)
            norm.bias.normal_(0.0, 0.2)
    ce, feat = torch.randn(2, 3, 16), torch.randn(2, 16, 4, 5)
    got = layer(ce, feat)
    want = _naive_hbis(layer, ce, feat, keep)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


def test_hbis_heatmap_gets_no_gradient_through_the_f2ce_weights() -> None:
    torch.manual_seed(0)
    layer = HBISLayer(embed_dim=16, topk_ratio=1.0)
    ce, feat = torch.randn(1, 2, 16), torch.randn(1, 16, 4, 4)
    new_ce, new_feat, _ = layer(ce, feat)
    new_ce.sum().backward(retain_graph=True)
    # The updated CE sees the heatmap only through the F2CE weights, which carry no gradient to W_q ...
    assert layer.query.weight.grad is None
    # ... while the CE2F path (softmax heatmap mixing the FiLM) does.
    new_feat.sum().backward()
    assert layer.query.weight.grad is not None and layer.query.weight.grad.abs().sum() > 0


def test_hbis_layer_parameter_count_matches_spec() -> None:
    assert sum(p.numel() for p in HBISLayer(256).parameters()) == 592_384


@pytest.mark.parametrize(("option", "value"), [("topk_ratio", 0.0), ("tau", 0.0), ("film_lambda", 1.5)])
def test_hbis_rejects_out_of_range_options(option: str, value: float) -> None:
    with pytest.raises(InvalidInputError, match=option):
        HBISLayer(16, **{option: value})


# ---- builders ---------------------------------------------------------------------------------------------


def test_paper_config_has_the_measured_parameter_count() -> None:
    model = bicorseg(num_classes=7)
    total = sum(p.numel() for p in model.parameters())
    assert total == pytest.approx(89.51e6, rel=0.01)
    assert sum(p.numel() for p in model.encoder.parameters()) == pytest.approx(87.564e6, rel=1e-4)
    assert sum(p.numel() for p in model.upsampler.parameters()) == 128
    assert model.classifier.weight.shape == (16, 256)


def test_potsdam_config_with_three_layers_has_the_measured_parameter_count() -> None:
    model = bicorseg(num_classes=6, num_layers=3, topk_ratio=1.0)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(90.11e6, rel=0.01)


def test_bad_options_raise_with_the_fix() -> None:
    with pytest.raises(InvalidInputError, match="multiple of 16"):
        create_model("bicorseg_small", num_classes=3, embed_dim=40)
    with pytest.raises(InvalidInputError, match="femto"):
        create_model("bicorseg_small", num_classes=3, backbone="resnet50")
    with pytest.raises(InvalidInputError, match="in_channels=3"):
        create_model("bicorseg_small", num_classes=3, in_channels=4, pretrained_path="x.pth")
    with pytest.raises(InvalidInputError, match="valid options: backbone"):
        create_model("bicorseg", num_classes=3, num_heads=8)
    with pytest.raises(InvalidInputError, match="bicorseg_hi_resnet only"):
        create_model("bicorseg_small", num_classes=3, backbone_options={"window_px": 4})


def test_pretrained_path_loads_a_local_torchvision_convnext_into_the_encoder(tmp_path) -> None:
    sd = torchvision_state_dict()
    path = tmp_path / "convnext_atto_tv.pth"
    torch.save(sd, path)
    model = create_model("bicorseg_small", num_classes=3, backbone="atto", pretrained_path=str(path))
    torch.testing.assert_close(model.encoder.stages[2].blocks[0].fc1.weight, sd["features.5.0.block.3.weight"])
    torch.testing.assert_close(model.encoder.stem.conv.bias, sd["features.0.0.bias"])


def test_extra_input_bands_are_supported_without_pretraining() -> None:
    model = create_model("bicorseg_small", num_classes=3, backbone="atto", in_channels=4, embed_dim=32).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 4, 32, 32)).logits.shape == (1, 3, 32, 32)


def test_hi_resnet_backbone_variant_runs_and_uses_its_divisor() -> None:
    torch.manual_seed(0)
    model = create_model("bicorseg_hi_resnet", num_classes=K, backbone="hi_resnet_small", embed_dim=32)
    assert model.size_divisor_px == 16
    assert model.encoder.strides[0] == 4
    model.train()
    out = model(torch.randn(2, 3, 48, 48))
    assert out.logits.shape == (2, K, 48, 48)
    assert [h.shape for h in out.heatmaps] == [(2, K, 12, 12)] * 2
    out.logits.mean().backward()
    assert not hasattr(model.encoder.trunk, "coarse_head")
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 48)).logits.shape == (1, K, 32, 48)
    with pytest.raises(InvalidInputError, match="16"):
        model(torch.randn(1, 3, 40, 48))


def test_traced_topk_path_matches_eager_topk_on_tie_free_heatmaps() -> None:
    from engine.models.hbis import _topk_by_threshold

    heat = torch.rand(2, 3, 300, generator=torch.Generator().manual_seed(4))
    eager = topk_pixel_weights(heat, topk_ratio=0.05, min_pixels=4)
    kept = _topk_by_threshold(heat, topk_ratio=0.05, min_pixels=4)
    torch.testing.assert_close(kept / kept.sum(-1, keepdim=True), eager)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_onnx_export_keeps_top_k_dynamic_across_tile_sizes(tmp_path) -> None:
    import numpy as np
    import onnxruntime as ort

    torch.manual_seed(0)
    model = create_model(
        "bicorseg_small", num_classes=3, backbone="atto", embed_dim=32, topk_ratio=0.05, min_pixels=4
    ).eval()

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(x).logits

    path = tmp_path / "bicorseg.onnx"
    axes = {0: "batch", 2: "height", 3: "width"}
    torch.onnx.export(
        Logits(),
        (torch.randn(1, 3, 64, 64),),
        str(path),
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": axes, "logits": axes},
        opset_version=17,
        dynamo=False,
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(2, 3, 128, 96)  # k = 38 here versus 13 at the trace size
    with torch.no_grad():
        expected = model(x).logits.numpy()
    got = session.run(None, {"image": x.numpy()})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4)


def test_hi_resnet_pretrained_path_loads_the_trunk_and_ignores_the_heads(tmp_path, caplog) -> None:
    torch.manual_seed(3)
    trained = create_model("hi_resnet_small", num_classes=6)
    path = tmp_path / "hi_resnet_small.pth"
    torch.save({"state_dict": trained.state_dict()}, path)
    with caplog.at_level("WARNING"):
        model = create_model("bicorseg_hi_resnet", num_classes=K, backbone="hi_resnet_small", pretrained_path=path)
    assert "random" not in caplog.text and "unused" not in caplog.text  # every trunk key loaded, heads ignored
    trunk = model.encoder.trunk.state_dict()
    for key, value in trained.state_dict().items():
        if key in trunk:
            torch.testing.assert_close(trunk[key], value, msg=key)


@pytest.mark.slow
def test_small_model_overfits_a_synthetic_three_band_pattern() -> None:
    torch.manual_seed(0)
    model = create_model("bicorseg_small", num_classes=3, backbone="atto", embed_dim=32).train()
    target = torch.zeros(2, 64, 64, dtype=torch.long)
    target[:, :, 21:42] = 1
    target[:, :, 42:] = 2
    x = torch.randn(2, 3, 64, 64) * 0.3
    for c in range(3):
        x[:, c][target == c] += 1.0  # band c is bright where the class is c
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for _ in range(80):
        out = model(x)
        loss = F.cross_entropy(out.logits, target) + 0.4 * F.cross_entropy(out.aux_logits, target)
        for heat in out.heatmaps:  # the paper's hierarchical heatmap supervision
            loss = loss + 0.1 * F.cross_entropy(F.interpolate(heat, size=(64, 64), mode="bilinear"), target)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(x).logits.argmax(1) == target).float().mean().item()
    assert accuracy > 0.8

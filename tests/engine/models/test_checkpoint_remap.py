"""Loading checkpoints in the BiCoR-Seg authors' state-dict layout through key remapping.

The authors' key names come from literal data (``bicor_authors_keys.py`` and :func:`authors_small_state_dict`),
transcribed from their ``network/models/bicor.py``, never from the mapping table under test.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from engine.errors import ModelLoadError
from engine.models import create_model
from engine.models.bicorseg import BiCoRSeg
from engine.models.checkpoint_remap import RemapReport, load_original_checkpoint
from tests.engine.models.bicor_authors_keys import (
    AUTHORS_EMBED_DIM,
    AUTHORS_NUM_CLASSES,
    AUTHORS_NUM_LAYERS,
    authors_keys,
)
from tests.engine.models.convnext_layouts import torchvision_state_dict

N, E, L = 4, 32, 2
ATTO_DIMS = (40, 80, 160, 320)


@pytest.fixture(scope="module")
def full_size_load() -> tuple[BiCoRSeg, dict[str, Tensor], RemapReport]:
    """The paper-size model filled from a state dict with the authors' literal key list; tensor i is all i."""
    torch.manual_seed(0)
    model = create_model(
        "bicorseg",
        num_classes=AUTHORS_NUM_CLASSES,
        embed_dim=AUTHORS_EMBED_DIM,
        num_layers=AUTHORS_NUM_LAYERS,
        topk_ratio=1.0,
    )
    sd = {f"net.{name}": torch.full(shape, float(i)) for i, (name, shape) in enumerate(authors_keys().items())}
    report = load_original_checkpoint(model, sd, strict=True)
    return model, sd, report


def test_authors_408_key_list_loads_every_tensor(full_size_load) -> None:
    model, sd, report = full_size_load
    assert len(sd) == 408
    assert report.missing_keys == ()
    assert report.unexpected_keys == ()
    assert len(report.loaded_keys) == len(model.state_dict()) == 408
    assert sum(v.numel() for v in sd.values()) == sum(v.numel() for v in model.state_dict().values())
    # Only two kinds change shape: the per-pixel Linear projectors (-> our 1x1 conv) and torchvision's (C, 1, 1)
    # layer scales of the 36 ConvNeXt-Base blocks (-> our (C,)).
    layer_scales = [k for k in report.reshaped_keys if k.endswith(".layer_scale")]
    assert len(layer_scales) == 36
    assert sorted(set(report.reshaped_keys) - set(layer_scales)) == [f"projectors.{s}.weight" for s in range(4)]


def test_authors_tensors_land_in_the_matching_modules(full_size_load) -> None:
    model, sd, _ = full_size_load
    hbis = "net.decoder.bicor_stack.layers"
    pairs = {
        "net.encoder.0.0.0.weight": model.encoder.stem.conv.weight,
        "net.encoder.0.4.1.weight": model.encoder.stages[2].downsample.conv.weight,
        "net.encoder.0.5.26.block.3.weight": model.encoder.stages[2].blocks[26].fc1.weight,
        "net.encoder.0.5.2.layer_scale": model.encoder.stages[2].blocks[2].layer_scale,
        "net.proj_layers.3.proj.bias": model.projectors[3].bias,
        "net.feature_aggregator.weight": model.fuse.weight,
        "net.decoder.class_dict.class_embed.weight": model.class_embed,
        f"{hbis}.2.dict_to_feat.weight": model.layers[2].query.weight,
        f"{hbis}.1.feat_to_dict.weight": model.layers[1].value.weight,
        f"{hbis}.0.dict_ln.bias": model.layers[0].norm_embed.bias,
        f"{hbis}.2.feat_ln.weight": model.layers[2].norm_feat.weight,
        f"{hbis}.1.gate_mlp.2.weight": model.layers[1].gate[2].weight,
        f"{hbis}.0.cand_mlp.0.bias": model.layers[0].candidate[0].bias,
        f"{hbis}.2.gamma_proj.weight": model.layers[2].film_gamma.weight,
        f"{hbis}.0.beta_proj.bias": model.layers[0].film_beta.bias,
        "net.decoder.upsampler.1.weight": model.upsampler.norm.weight,
        "net.decoder.classifier_proj.weight": model.classifier.weight,
        "net.decoder.static_classifier.weight": model.aux_classifier.weight,
    }
    for key, param in pairs.items():
        torch.testing.assert_close(param.detach().flatten(), sd[key].flatten(), msg=key)


def test_upsampler_layer_norm_eps_matches_the_authors() -> None:
    model = create_model("bicorseg_small", num_classes=N, backbone="atto", embed_dim=E, num_layers=L)
    assert model.upsampler.norm.eps == 1e-6  # the authors' LayerNorm2d default, used by their upsampler


def authors_small_state_dict(seed: int = 0, wrapper: str = "net.") -> dict[str, Tensor]:
    """A random checkpoint with the authors' key names at atto size (E = 32, L = 2, N = 4)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int, offset: float = 0.0) -> Tensor:
        return torch.randn(*shape, generator=g) * 0.3 + offset

    sd = {
        f"encoder.0.{k[len('features.') :]}": v
        for k, v in torchvision_state_dict(seed=seed).items()
        if k.startswith("features.")
    }
    for s, c in enumerate(ATTO_DIMS):
        sd[f"proj_layers.{s}.proj.weight"], sd[f"proj_layers.{s}.proj.bias"] = r(E, c), r(E)
    sd["feature_aggregator.weight"] = r(E, 4 * E, 1, 1)
    sd["decoder.class_dict.class_embed.weight"] = r(N, E)
    for layer in range(L):
        p = f"decoder.bicor_stack.layers.{layer}"
        sd[f"{p}.dict_to_feat.weight"] = r(E, E)
        sd[f"{p}.feat_to_dict.weight"] = r(E, E, 1, 1)
        sd[f"{p}.gate_mlp.0.weight"], sd[f"{p}.gate_mlp.0.bias"] = r(E, 2 * E), r(E)
        sd[f"{p}.gate_mlp.2.weight"], sd[f"{p}.gate_mlp.2.bias"] = r(E, E), r(E)
        sd[f"{p}.cand_mlp.0.weight"], sd[f"{p}.cand_mlp.0.bias"] = r(E, E), r(E)
        sd[f"{p}.cand_mlp.2.weight"], sd[f"{p}.cand_mlp.2.bias"] = r(E, E), r(E)
        sd[f"{p}.gamma_proj.weight"], sd[f"{p}.gamma_proj.bias"] = r(E, E), r(E)
        sd[f"{p}.beta_proj.weight"], sd[f"{p}.beta_proj.bias"] = r(E, E), r(E)
        for norm in ("feat_ln", "dict_ln"):
            sd[f"{p}.{norm}.weight"], sd[f"{p}.{norm}.bias"] = r(E, offset=1.0), r(E)
    sd["decoder.upsampler.1.weight"], sd["decoder.upsampler.1.bias"] = r(E // 4, offset=1.0), r(E // 4)
    sd["decoder.classifier_proj.weight"] = r(E // 16, E)
    sd["decoder.static_classifier.weight"] = r(E // 16, E)
    return {f"{wrapper}{k}": v for k, v in sd.items()}


def authors_decoder_reference(sd: dict[str, Tensor], feats: list[Tensor]) -> Tensor:
    """The authors' decoder written from the paper / their module's equations (top-k ratio 1, one inner step)."""
    w = {k.removeprefix("net."): v for k, v in sd.items()}
    size = feats[0].shape[-2:]
    projected = []
    for s, feat in enumerate(feats):
        y = F.linear(feat.permute(0, 2, 3, 1), w[f"proj_layers.{s}.proj.weight"], w[f"proj_layers.{s}.proj.bias"])
        projected.append(F.interpolate(y.permute(0, 3, 1, 2), size=size, mode="bilinear", align_corners=False))
    fm = F.conv2d(torch.cat(projected[::-1], dim=1), w["feature_aggregator.weight"])
    ce = w["decoder.class_dict.class_embed.weight"].unsqueeze(0).expand(fm.shape[0], -1, -1)
    for layer in range(L):
        p = f"decoder.bicor_stack.layers.{layer}."
        ce_n = F.layer_norm(ce, (E,), w[p + "dict_ln.weight"], w[p + "dict_ln.bias"])  # torch default eps 1e-5
        f_n = F.layer_norm(fm.permute(0, 2, 3, 1), (E,), w[p + "feat_ln.weight"], w[p + "feat_ln.bias"])
        f_n = f_n.permute(0, 3, 1, 2)
        score = torch.einsum("bnc,bchw->bnhw", F.linear(ce_n, w[p + "dict_to_feat.weight"]), f_n) / math.sqrt(E)
        h_sig, h_soft = torch.sigmoid(score).flatten(2), torch.softmax(score, dim=1)
        weights = h_sig / (h_sig.sum(-1, keepdim=True) + 1e-6)
        values = F.conv2d(f_n, w[p + "feat_to_dict.weight"]).flatten(2)
        context = torch.einsum("bnp,bcp->bnc", weights, values)
        hidden = F.gelu(F.linear(torch.cat([ce_n, context], -1), w[p + "gate_mlp.0.weight"], w[p + "gate_mlp.0.bias"]))
        gate = torch.sigmoid(F.linear(hidden, w[p + "gate_mlp.2.weight"], w[p + "gate_mlp.2.bias"]))
        hidden = F.gelu(F.linear(context, w[p + "cand_mlp.0.weight"], w[p + "cand_mlp.0.bias"]))
        cand = F.linear(hidden, w[p + "cand_mlp.2.weight"], w[p + "cand_mlp.2.bias"])
        ce = gate * cand + (1 - gate) * ce
        gamma = 1 + torch.tanh(F.linear(ce, w[p + "gamma_proj.weight"], w[p + "gamma_proj.bias"]))
        beta = F.linear(ce, w[p + "beta_proj.weight"], w[p + "beta_proj.bias"])
        per_class = gamma[..., None, None] * fm.unsqueeze(1) + beta[..., None, None]  # (B, N, E, h, w)
        fm = 0.5 * fm + 0.5 * (h_soft.unsqueeze(2) * per_class).sum(1)
    up = F.pixel_shuffle(fm, 2)
    mean, var = up.mean(1, keepdim=True), (up - up.mean(1, keepdim=True)).pow(2).mean(1, keepdim=True)
    up = (up - mean) / torch.sqrt(var + 1e-6)  # the authors' LayerNorm2d default eps
    up = w["decoder.upsampler.1.weight"][:, None, None] * up + w["decoder.upsampler.1.bias"][:, None, None]
    up = F.gelu(F.pixel_shuffle(F.gelu(up), 2))
    return torch.einsum("bnc,bchw->bnhw", F.linear(ce, w["decoder.classifier_proj.weight"]), up)


@pytest.fixture
def model() -> BiCoRSeg:
    torch.manual_seed(0)
    return create_model("bicorseg_small", num_classes=N, backbone="atto", embed_dim=E, num_layers=L, topk_ratio=1.0)


def test_loaded_model_computes_the_authors_decoder(model: BiCoRSeg) -> None:
    sd = authors_small_state_dict()
    load_original_checkpoint(model, sd, strict=True)
    model.eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits = model(x).logits
        expected = authors_decoder_reference(sd, model.encoder.forward_features(x))
    assert logits.shape == (2, N, 64, 64)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)


def test_unknown_and_absent_keys_are_reported(model: BiCoRSeg, tmp_path) -> None:
    sd = authors_small_state_dict(wrapper="")
    del sd["decoder.bicor_stack.layers.1.beta_proj.bias"]
    sd["fisher_loss.scale"] = torch.ones(1)
    path = tmp_path / "bicor.ckpt"
    torch.save({"state_dict": {f"net.{k}": v for k, v in sd.items()}, "epoch": 3}, path)  # Lightning-style
    report = load_original_checkpoint(model, path)
    assert report.missing_keys == ("layers.1.film_beta.bias",)
    assert report.unexpected_keys == ("fisher_loss.scale",)
    with pytest.raises(ModelLoadError, match="1 missing"):
        load_original_checkpoint(model, path, strict=True)


def test_extra_renames_adapt_a_differently_named_checkpoint(model: BiCoRSeg) -> None:
    sd = {
        k.replace("decoder.bicor_stack.layers.", "refiners.").replace("class_dict.class_embed", "tokens"): v
        for k, v in authors_small_state_dict().items()
    }
    report = load_original_checkpoint(model, sd)
    assert len(report.unexpected_keys) == 1 + 2 * 18  # the class table + the 18 tensors of each HBIS layer
    renames = {r"^refiners\.": "decoder.bicor_stack.layers.", r"^decoder\.tokens": "decoder.class_dict.class_embed"}
    report = load_original_checkpoint(model, sd, strict=True, extra_renames=renames)
    assert report.missing_keys == ()


def test_checkpoint_with_other_class_count_is_rejected_with_the_fix(model: BiCoRSeg) -> None:
    sd = authors_small_state_dict()
    sd["net.decoder.class_dict.class_embed.weight"] = torch.zeros(N + 2, E)
    with pytest.raises(ModelLoadError, match="num_classes"):
        load_original_checkpoint(model, sd)

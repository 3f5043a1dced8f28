"""Loading checkpoints in the BiCoR-Seg authors' (assumed) state-dict layout through key remapping."""

from __future__ import annotations

import pytest
import torch

from engine.errors import ModelLoadError
from engine.models import create_model
from engine.models.bicorseg import BiCoRSeg
from engine.models.checkpoint_remap import load_original_checkpoint
from tests.engine.models.convnext_layouts import torchvision_state_dict

N, E, L = 4, 32, 2
ATTO_DIMS = (40, 80, 160, 320)


def authors_state_dict(seed: int = 0, wrapper: str = "net.") -> dict[str, torch.Tensor]:
    """A synthetic checkpoint in the layout documented in engine/models/checkpoint_remap.py (atto, E=32, L=2)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    sd = {
        f"backbone.{k[len('features.') :]}": v
        for k, v in torchvision_state_dict(seed=seed).items()
        if k.startswith("features.")
    }
    for s, c in enumerate(ATTO_DIMS):
        sd[f"projs.{s}.weight"] = r(E, c)  # nn.Linear, applied per pixel
        sd[f"projs.{s}.bias"] = r(E)
    sd["fuse.weight"] = r(E, 4 * E, 1, 1)
    sd["ce0"] = r(N, E)
    for layer in range(L):
        p = f"hbis.{layer}"
        for norm in ("ln_d", "ln_f"):
            sd[f"{p}.{norm}.weight"], sd[f"{p}.{norm}.bias"] = r(E), r(E)
        sd[f"{p}.w_q.weight"] = r(E, E)
        sd[f"{p}.v.weight"] = r(E, E, 1, 1)
        sd[f"{p}.mlp_g.0.weight"], sd[f"{p}.mlp_g.0.bias"] = r(E, 2 * E), r(E)
        sd[f"{p}.mlp_g.2.weight"], sd[f"{p}.mlp_g.2.bias"] = r(E, E), r(E)
        sd[f"{p}.mlp_c.0.weight"], sd[f"{p}.mlp_c.0.bias"] = r(E, E), r(E)
        sd[f"{p}.mlp_c.2.weight"], sd[f"{p}.mlp_c.2.bias"] = r(E, E), r(E)
        sd[f"{p}.w_gamma.weight"], sd[f"{p}.w_gamma.bias"] = r(E, E), r(E)
        sd[f"{p}.w_beta.weight"], sd[f"{p}.w_beta.bias"] = r(E, E), r(E)
    sd["upsampler.1.weight"], sd["upsampler.1.bias"] = r(E // 4), r(E // 4)
    sd["classifier.weight"] = r(E // 16, E)
    sd["aux_classifier.weight"] = r(E // 16, E)
    return {f"{wrapper}{k}": v for k, v in sd.items()}


@pytest.fixture
def model() -> BiCoRSeg:
    torch.manual_seed(0)
    return create_model("bicorseg_small", num_classes=N, backbone="atto", embed_dim=E, num_layers=L)


def test_authors_layout_loads_every_key(model: BiCoRSeg) -> None:
    sd = authors_state_dict()
    report = load_original_checkpoint(model, sd, strict=True)
    assert report.missing_keys == ()
    assert report.unexpected_keys == ()
    assert len(report.loaded_keys) == len(model.state_dict())
    assert "projectors.0.weight" in report.reshaped_keys  # Linear (E, c) -> 1x1 conv (E, c, 1, 1)


def test_authors_tensors_land_in_the_modules_the_spec_names(model: BiCoRSeg) -> None:
    sd = authors_state_dict()
    load_original_checkpoint(model, sd)
    pairs = {
        "net.ce0": model.class_embed,
        "net.fuse.weight": model.fuse.weight,
        "net.hbis.1.w_q.weight": model.layers[1].query.weight,
        "net.hbis.0.ln_d.bias": model.layers[0].norm_embed.bias,
        "net.hbis.0.ln_f.weight": model.layers[0].norm_feat.weight,
        "net.hbis.1.mlp_g.2.weight": model.layers[1].gate[2].weight,
        "net.hbis.0.mlp_c.0.bias": model.layers[0].candidate[0].bias,
        "net.hbis.1.w_gamma.weight": model.layers[1].film_gamma.weight,
        "net.hbis.0.w_beta.bias": model.layers[0].film_beta.bias,
        "net.upsampler.1.weight": model.upsampler.norm.weight,
        "net.classifier.weight": model.classifier.weight,
        "net.aux_classifier.weight": model.aux_classifier.weight,
        "net.backbone.5.2.block.3.weight": model.encoder.stages[2].blocks[2].fc1.weight,
        "net.backbone.5.2.layer_scale": model.encoder.stages[2].blocks[2].layer_scale,
        "net.backbone.4.1.weight": model.encoder.stages[2].downsample.conv.weight,
    }
    for key, param in pairs.items():
        torch.testing.assert_close(param.detach().flatten(), sd[key].flatten(), msg=key)
    torch.testing.assert_close(model.projectors[2].weight[:, :, 0, 0], sd["net.projs.2.weight"])


def test_loaded_linear_projector_computes_the_same_per_pixel_linear(model: BiCoRSeg) -> None:
    sd = authors_state_dict()
    load_original_checkpoint(model, sd)
    feat = torch.randn(1, ATTO_DIMS[1], 3, 3)
    expected = torch.nn.functional.linear(feat.permute(0, 2, 3, 1), sd["net.projs.1.weight"], sd["net.projs.1.bias"])
    torch.testing.assert_close(model.projectors[1](feat), expected.permute(0, 3, 1, 2), rtol=1e-5, atol=1e-5)


def test_unknown_and_absent_keys_are_reported(model: BiCoRSeg, tmp_path) -> None:
    sd = authors_state_dict(wrapper="")
    del sd["hbis.1.w_beta.bias"]
    sd["fisher_loss.scale"] = torch.ones(1)
    path = tmp_path / "bicor.ckpt"
    torch.save({"state_dict": {f"net.{k}": v for k, v in sd.items()}, "epoch": 3}, path)  # Lightning-style
    report = load_original_checkpoint(model, path)
    assert report.missing_keys == ("layers.1.film_beta.bias",)
    assert report.unexpected_keys == ("fisher_loss.scale",)
    with pytest.raises(ModelLoadError, match="1 missing"):
        load_original_checkpoint(model, path, strict=True)


def test_extra_renames_adapt_a_differently_named_checkpoint(model: BiCoRSeg) -> None:
    sd = {k.replace("hbis.", "refiners.").replace("ce0", "class_tokens"): v for k, v in authors_state_dict().items()}
    report = load_original_checkpoint(model, sd)
    assert len(report.unexpected_keys) == 1 + 2 * 18  # class_tokens + the 18 tensors of each HBIS layer
    report = load_original_checkpoint(
        model, sd, strict=True, extra_renames={r"^refiners\.": "hbis.", r"^class_tokens$": "ce0"}
    )
    assert report.missing_keys == ()


def test_checkpoint_with_other_class_count_is_rejected_with_the_fix(model: BiCoRSeg) -> None:
    sd = authors_state_dict()
    sd["net.ce0"] = torch.zeros(N + 2, E)
    with pytest.raises(ModelLoadError, match="num_classes"):
        load_original_checkpoint(model, sd)


def test_loaded_model_runs(model: BiCoRSeg) -> None:
    load_original_checkpoint(model, authors_state_dict())
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert out.logits.shape == (1, N, 64, 64)
    assert torch.isfinite(out.logits).all()

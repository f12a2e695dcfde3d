"""The native-name triplet (ComfyUI backend) against the peft triplet and the exported ComfyUI file."""
import pytest
import torch

from dreamrelation_core.archs import MOCHI, ROLES, WAN
from dreamrelation_core.formats import to_native
from dreamrelation_core.triplet import lora_from_model
from dreamrelation_core.native import NativeTriplet, native_targets
from dreamrelation_core.triplet import TripletConfig, inject_triplet, lora_parameters, resolve_targets


def native_shapes(arch, model):
    """Weight name -> shape of the native (ComfyUI) model that corresponds to a diffusers `model`."""
    shapes = {}
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or not name.startswith(arch.diffusers_blocks + "."):
            continue
        _, index, rel = name.split(".", 2)
        if rel in arch.native_modules:
            native, layout = arch.native_modules[rel]
            rows = module.out_features * (3 if isinstance(layout, int) else 1)
            shapes[f"diffusion_model.blocks.{index}.{native}.weight"] = (rows, module.in_features)
    return shapes


def random_lora(make_tiny, arch, config):
    model = make_tiny(arch)
    inject_triplet(model, arch, config)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in lora_parameters(model).values():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model, lora_from_model(model, arch, {r: config.alpha_of(r) for r in ROLES})


@pytest.mark.parametrize("arch", [WAN, MOCHI], ids=["wan", "mochi"])
def test_native_targets_and_names_match_the_peft_triplet(make_tiny, arch):
    model = make_tiny(arch)
    config = TripletConfig(rank=4, alpha=4)
    targets = native_targets(arch, native_shapes(arch, model), config)
    expected = resolve_targets(model, arch)
    for role in ROLES:
        assert sorted(t.module for t in targets if t.role == role) == sorted(expected[role])
    inject_triplet(model, arch, config)
    native = NativeTriplet(arch, targets, config)
    peft = lora_parameters(model)
    assert {n: p.shape for n, p in native.lora_parameters().items()} == {n: p.shape for n, p in peft.items()}


@pytest.mark.parametrize("arch", [WAN, MOCHI], ids=["wan", "mochi"])
def test_weight_deltas_equal_what_comfyui_adds_from_the_exported_file(make_tiny, arch):
    config = TripletConfig(rank=4, alpha=7, extra_targets={"ffn": ["ffn.net.0.proj"] if arch is WAN else ["ff.net.0.proj"]})
    model, lora = random_lora(make_tiny, arch, config)
    native = NativeTriplet(arch, native_targets(arch, native_shapes(arch, make_tiny(arch)), config), config)
    native.load_relation_lora(lora)
    native.activate(("relation", "ffn"))
    tensors, role_keys, _ = to_native(lora)
    g = torch.Generator().manual_seed(0)
    checked = 0
    for stem in role_keys["relation"] + role_keys["ffn"]:
        a, b = tensors[f"{stem}.lora_A.weight"], tensors[f"{stem}.lora_B.weight"]
        alpha = tensors.get(f"{stem}.alpha", torch.tensor(float(a.shape[0]))).item()
        file_delta = (alpha / a.shape[0]) * b @ a
        weight = torch.randn(file_delta.shape, generator=g)
        assert torch.allclose(native.weight_delta(f"{stem}.weight")(weight) - weight, file_delta, atol=1e-5), stem
        checked += 1
    assert checked == len(role_keys["relation"]) + len(role_keys["ffn"]) > 0
    back = native.to_relation_lora()
    for role in ROLES:
        for module, (a, b) in lora.weights[role].items():
            assert torch.equal(back.weights[role][module][0], a) and torch.equal(back.weights[role][module][1], b)


def test_gating_on_fused_mochi_weights(make_tiny):
    config = TripletConfig(rank=2, alpha=2)
    _, lora = random_lora(make_tiny, MOCHI, config)
    native = NativeTriplet(MOCHI, native_targets(MOCHI, native_shapes(MOCHI, make_tiny(MOCHI)), config), config)
    native.load_relation_lora(lora)
    key = "diffusion_model.blocks.0.attn.qkv_x.weight"
    weight = torch.zeros(192, 64)
    native.activate(("subject1", "ffn"))
    delta = native.weight_delta(key)(weight)
    assert torch.count_nonzero(delta[:128]) == 0
    assert torch.allclose(delta[128:], lora.delta("subject1", "transformer_blocks.0.attn1.to_v"), atol=1e-6)
    delta.sum().backward()
    grads = {n: p.grad for n, p in native.lora_parameters().items() if "transformer_blocks.0.attn1.to_" in n}
    assert all(g is not None for n, g in grads.items() if ".subject1." in n and "to_v" in n)
    assert all(g is None for n, g in grads.items() if ".relation." in n or ".subject2." in n)
    native.activate(())
    assert native.weight_delta(key)(weight) is weight                   # nothing active: no work at all


def test_native_targets_reject_foreign_models():
    with pytest.raises(ValueError, match="is this a wan model"):
        native_targets(WAN, {"diffusion_model.blocks.0.attn.qkv_x.weight": (12, 4)})


@pytest.mark.parametrize("arch", [WAN, MOCHI], ids=["wan", "mochi"])
def test_bypass_output_deltas_equal_the_weight_deltas_with_their_gradients(make_tiny, arch):
    """Bypass mode (forward hooks on the linears' outputs) computes what the weight wrappers compute, for every
    native layout (Mochi's fused q/k/v, swapped halves), and gives the LoRAs the same gradients."""
    config = TripletConfig(rank=4, alpha=7)
    _, lora = random_lora(make_tiny, arch, config)
    native = NativeTriplet(arch, native_targets(arch, native_shapes(arch, make_tiny(arch)), config), config)
    native.load_relation_lora(lora)
    g = torch.Generator().manual_seed(1)
    layouts = set()
    for roles in (("relation", "subject1", "subject2", "ffn"), ("subject2", "ffn")):
        native.activate(roles)
        for key in native.weight_keys():
            layouts |= {t.layout for t in native.targets if t.weight == key}
            weight = torch.randn(_rows_cols(native, key), generator=g)
            bias, x = torch.randn(weight.shape[0], generator=g), torch.randn(2, 5, weight.shape[1], generator=g)
            wrapped = torch.nn.functional.linear(x, native.weight_delta(key)(weight), bias)
            if not wrapped.requires_grad:          # no active role on this weight: both leave it alone
                assert torch.equal(native.output_delta(key)(None, (x,), wrapped), wrapped)
                continue
            grads_wrapped = torch.autograd.grad(wrapped.square().sum(), list(native.lora_parameters().values()),
                                                allow_unused=True)
            hooked = native.output_delta(key)(None, (x,), torch.nn.functional.linear(x, weight, bias))
            grads_hooked = torch.autograd.grad(hooked.square().sum(), list(native.lora_parameters().values()),
                                               allow_unused=True)
            assert torch.allclose(hooked, wrapped, atol=1e-5), key
            for a, b in zip(grads_wrapped, grads_hooked):
                assert (a is None) == (b is None), key
                assert a is None or (a - b).norm() <= 1e-5 * a.norm(), (key, (a - b).norm() / a.norm())
    assert layouts >= ({None, 0, 1, 2} if arch is MOCHI else {None})
    native.activate(())
    output = torch.randn(3, 4)
    assert native.output_delta(native.weight_keys()[0])(None, (None,), output) is output     # nothing active


def _rows_cols(native, key):
    target = next(t for t in native.targets if t.weight == key)
    return (target.out_features * (3 if isinstance(target.layout, int) else 1), target.in_features)

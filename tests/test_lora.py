"""lora.py: per-example batched LoRA vs a naive loop, merge, and PEFT round trips against the real peft library."""
import pytest
import torch

from lora import LoRALinear, load_adapter, lora_scale, save_adapter
from model import Transformer
from tests.test_model import hf_model

torch.set_num_threads(1)


def random_adapters(m, batch, seed=0, std=0.05):
    g = torch.Generator().manual_seed(seed)
    L = m.config.n_layers
    out = {}
    for name, (d_in, d_out) in m.lora_shapes().items():
        out[name] = (torch.randn(batch, L, 8, d_in, generator=g) * std, torch.randn(batch, L, d_out, 8, generator=g) * std)
    return out


def test_zero_B_leaves_logits_unchanged(tmp_path):
    hf_model("llama", tmp_path)
    m = Transformer.from_pretrained(tmp_path)
    ids = torch.randint(0, 101, (2, 9))
    lora = random_adapters(m, 2)
    lora = {k: (A, torch.zeros_like(B)) for k, (A, B) in lora.items()}
    with torch.no_grad():
        assert torch.equal(m(ids), m(ids, lora=lora))


def test_batched_equals_per_example_loop(tmp_path):
    hf_model("qwen2", tmp_path)
    m = Transformer.from_pretrained(tmp_path)
    ids = torch.randint(0, 101, (3, 10))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    lora = random_adapters(m, 3)
    with torch.no_grad():
        batched = m(ids, attention_mask=mask, lora=lora)
        for i in range(3):  # each example alone, with its own adapter loaded as a static one
            single = {k: (A[i:i + 1], B[i:i + 1]) for k, (A, B) in lora.items()}
            alone = m(ids[i:i + 1], attention_mask=mask[i:i + 1], lora=single)
            assert (alone - batched[i:i + 1]).abs().max() <= 1e-5
    assert not torch.allclose(batched, m(ids, attention_mask=mask))  # and the adapters did something


def test_per_example_equals_static_adapter(tmp_path):
    hf_model("llama", tmp_path)
    m = Transformer.from_pretrained(tmp_path)
    ids = torch.randint(0, 101, (1, 8))
    lora = random_adapters(m, 1)
    with torch.no_grad():
        dynamic = m(ids, lora=lora)
        for i, layer in enumerate(m.model.layers):
            for name in ("q_proj", "v_proj"):
                A, B = lora[name]
                getattr(layer.self_attn, name).add_adapter(A=A[0, i], B=B[0, i])
        static = m(ids)
    assert (dynamic - static).abs().max() <= 1e-5


def test_merge_unmerge():
    torch.manual_seed(0)
    lin = LoRALinear(16, 12, bias=True)
    torch.nn.init.normal_(lin.weight)
    lin.add_adapter()
    torch.nn.init.normal_(lin.lora_B)
    lin.eval()
    x = torch.randn(2, 5, 16)
    w0 = lin.weight.clone()
    y = lin(x)
    lin.merge()
    lin.merge()  # twice = once
    assert torch.allclose(lin.weight, w0 + lin.scale * lin.lora_B @ lin.lora_A, atol=1e-6)
    assert torch.allclose(lin(x), y, atol=1e-5)
    lin.unmerge()
    assert torch.allclose(lin.weight, w0, atol=1e-6)
    assert torch.allclose(lin(x), y, atol=1e-5)


def test_scale_is_rslora():
    assert abs(lora_scale() - 16 / 8 ** 0.5) < 1e-12


def test_adapter_loads_in_peft_with_same_logits(tmp_path):
    peft = pytest.importorskip("peft")
    hf = hf_model("llama", tmp_path / "base")
    ours = Transformer.from_pretrained(tmp_path / "base")
    lora = random_adapters(ours, 1)
    save_adapter(tmp_path / "adapter", {k: (A[0], B[0]) for k, (A, B) in lora.items()}, base_model_name="tiny")
    pm = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    assert pm.peft_config["default"].use_rslora
    ids = torch.randint(0, 101, (2, 9))
    with torch.no_grad():
        ref = pm(ids).logits
        assert not torch.allclose(ref, ours(ids), atol=1e-3)  # the adapter changes the output
        assert (ours(ids, lora={k: (A.expand(2, -1, -1, -1), B.expand(2, -1, -1, -1)) for k, (A, B) in lora.items()})
                - ref).abs().max() <= 1e-5
        load_adapter(ours, tmp_path / "adapter")
        assert (ours(ids) - ref).abs().max() <= 1e-5


def test_peft_saved_adapter_loads_in_ours(tmp_path):
    peft = pytest.importorskip("peft")
    hf = hf_model("qwen2", tmp_path / "base")
    ours = Transformer.from_pretrained(tmp_path / "base")
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    pm = peft.get_peft_model(hf, cfg).eval()
    pm.save_pretrained(tmp_path / "adapter")
    ids = torch.randint(0, 101, (2, 9))
    with torch.no_grad():
        ref = pm(ids).logits
        load_adapter(ours, tmp_path / "adapter")
        assert (ours(ids) - ref).abs().max() <= 1e-5


def test_adapter_that_does_not_fit(tmp_path):
    hf_model("llama", tmp_path / "base")
    hf_model("llama", tmp_path / "other", hidden_size=32, num_attention_heads=2, num_key_value_heads=1)
    small = Transformer.from_pretrained(tmp_path / "other")
    lora = random_adapters(small, 1)
    save_adapter(tmp_path / "adapter", {k: (A[0], B[0]) for k, (A, B) in lora.items()})
    with pytest.raises(ValueError, match="do not fit"):
        load_adapter(Transformer.from_pretrained(tmp_path / "base"), tmp_path / "adapter")
    with pytest.raises(FileNotFoundError, match="adapter file missing"):
        load_adapter(small, tmp_path / "nothing")


def test_delta_w_gram_equals_the_dense_products():
    from lora import delta_w_gram
    g = torch.Generator().manual_seed(0)
    adapters = {"q_proj": (torch.randn(5, 3, 4, 7, generator=g), torch.randn(5, 3, 6, 4, generator=g)),
                "v_proj": (torch.randn(5, 3, 4, 7, generator=g), torch.randn(5, 3, 2, 4, generator=g))}
    dense = torch.cat([(B.double() @ A.double()).reshape(5, -1) for A, B in adapters.values()], 1)  # dW = B A, flat
    torch.testing.assert_close(delta_w_gram(adapters), dense @ dense.T, rtol=1e-12, atol=1e-10)

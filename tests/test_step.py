"""train.t2l_step (length-grouped micro-batches, one hypernetwork backward) against train.t2l_loss (today's one
padded batch, the simple reference): same loss and same hypernetwork gradients, whatever the micro-batch budget."""
from contextlib import nullcontext

import pytest
import torch

from t2l import HyperConfig, HyperNetwork
from recipes import micro_batches, t2l_loss, t2l_step, make_batch

transformers = pytest.importorskip("transformers")
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from model import Transformer
    path = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    transformers.LlamaForCausalLM(cfg).save_pretrained(path)
    model = Transformer.from_pretrained(path).eval()  # eval: no LoRA dropout, so both sides are deterministic
    model.requires_grad_(False)
    return model


def examples(n, seed):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        T = int(torch.randint(6, 40, (1,), generator=g))
        out.append((torch.randint(0, 97, (T,), generator=g).tolist(), int(torch.randint(2, T - 1, (1,), generator=g))))
    return out


def grads(net):
    return {k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("size", ["large", "small"])
@pytest.mark.parametrize("budget", [1, 60, 10_000])  # one example per group, a few groups, one group
def test_step_equals_one_padded_batch(tiny, size, budget):
    torch.manual_seed(1)
    net = HyperNetwork(HyperConfig(size, 32, 2, tiny.lora_shapes(), latent=16, head_in=32)).eval()
    with torch.no_grad():  # a trained-looking network: B != 0, so the adapters matter
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    exs = examples(7, seed=budget)
    emb = torch.randn(7, 32)
    ids, mask, target = make_batch(exs, 0, "cpu")
    ce_ref, loss_ref = t2l_loss(tiny, net, emb, ids, mask, target, label_smoothing=0.1, reg=0.1)
    loss_ref.backward()
    ref = grads(net)
    net.zero_grad(set_to_none=True)
    ce, loss, computed = t2l_step(tiny, net, emb, exs, 0, "cpu", budget, nullcontext(), label_smoothing=0.1, reg=0.1)
    got = grads(net)
    assert torch.allclose(ce, ce_ref, atol=1e-6) and torch.allclose(loss, loss_ref, atol=1e-6)
    assert set(got) == set(ref) and len(ref) > 5
    for k in ref:
        assert torch.allclose(got[k], ref[k], rtol=1e-4, atol=1e-7), k
    assert computed <= ids.numel() and (budget > 1000 or computed < ids.numel())


def test_micro_batches_cover_the_batch_within_the_budget():
    lengths = [5, 40, 12, 12, 7, 33, 90, 1]
    for budget in (1, 24, 64, 100, 1000):
        groups = micro_batches(lengths, budget)
        assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
        for g in groups:
            assert len(g) == 1 or len(g) * max(lengths[i] for i in g) <= budget
    assert micro_batches(lengths, 1000) == [sorted(range(8), key=lambda i: lengths[i])]


def test_compiled_forward_equals_eager(tiny, monkeypatch):
    import copy
    import shutil
    from model import compile_model
    if shutil.which("g++") is None:
        pytest.skip("no C++ compiler for torch.compile on CPU")
    monkeypatch.setenv("CXX", "/no/such/g++")
    assert compile_model(copy.deepcopy(tiny), "cpu") == "no C++ compiler '/no/such/g++' on PATH"
    monkeypatch.delenv("CXX")
    compiled = copy.deepcopy(tiny)
    assert compile_model(compiled, "cpu") is None
    ids = torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(compiled(ids), tiny(ids), atol=1e-4)

"""Batched greedy generation with an adapter per row (generate.generate_rows): a batch mixing adapters gives
every row the tokens that row gets decoded alone, and those of a naive full-forward loop without a KV
cache; and the tokens equal `transformers`' greedy generate of the same tiny random Llama with the same
adapter loaded by `peft`. Tiny random model (2 layers, 32 wide) with the real tokenizer: seconds."""

import pytest
import torch

from tests import conftest

import generate as gen
from lora import lora_scale
from model import Transformer

transformers = pytest.importorskip("transformers")
torch.set_num_threads(1)
N_NEW = 12


def tiny_llama(path, model_dir, hidden=32, seed=0):
    return conftest.tiny_llama(path, model_dir, hidden, heads=4, kv_heads=2, seed=seed)


def random_bank(model, n, seed=0, std=0.3):
    """n random adapters in the per-example format, strong enough to change the greedy tokens."""
    g = torch.Generator().manual_seed(seed)
    L, r = model.config.n_layers, 8
    bank = {"scale": lora_scale()}
    for name, (d_in, d_out) in model.lora_shapes().items():
        bank[name] = (torch.randn(n, L, r, d_in, generator=g) * std, torch.randn(n, L, d_out, r, generator=g) * std)
    return bank


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, model_dir):
    from data import Tokenizer
    path = tiny_llama(tmp_path_factory.mktemp("gen") / "tiny", model_dir)
    tok = Tokenizer(path)
    texts = ["Translate to French: the cat", "Is 7 a prime number? Answer yes or no.", "hi",
             "List three colours of the rainbow, separated by commas, and nothing else please."]
    prompts = [tok.encode(tok.chat([{"role": "user", "content": t}])) for t in texts]
    return path, Transformer.from_pretrained(path), tok, prompts


def row_adapter(bank, row):
    return None if row is None else {k: v if k == "scale" else (v[0][row:row + 1], v[1][row:row + 1]) for k, v in bank.items()}


@torch.no_grad()
def naive_greedy(model, prompt, lora, n):
    # no cache, no padding: the whole sequence again for every new token
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(model(torch.tensor([ids]), lora=lora)[0, -1].argmax()))
    return ids[len(prompt):]


def test_mixed_batch_equals_each_row_alone(tiny):
    _, model, tok, prompts = tiny
    bank = random_bank(model, 3)
    rows = [0, 2, None, 1, 2, None, 0, 0]  # two rows per prompt, each with another adapter (None: base model)
    ps = prompts + prompts
    got = gen.generate_rows(model, ps, rows, bank, N_NEW, None, tok.pad_id, batch_size=8, device="cpu")
    alone = [gen.generate_rows(model, [p], [r], bank, N_NEW, None, tok.pad_id, 1, "cpu")[0] for p, r in zip(ps, rows)]
    naive = [naive_greedy(model, p, row_adapter(bank, r), N_NEW) for p, r in zip(ps, rows)]
    assert got == alone == naive
    assert all(got[i] != got[i + 4] for i in range(4))  # the adapters matter
    # batch size 3: other padding and other neighbours, same tokens
    assert gen.generate_rows(model, ps, rows, bank, N_NEW, None, tok.pad_id, 3, "cpu") == got


def test_stops_at_eos_per_row(tiny):
    _, model, tok, prompts = tiny
    bank = random_bank(model, 2)
    free = gen.generate_rows(model, prompts, [0, 1, 0, 1], bank, N_NEW, None, tok.pad_id, 4, "cpu")
    j = next(j for j in range(2, N_NEW) if free[1][j] not in free[1][:j])
    eos = free[1][j]  # make a token new at row 1's step j the end of turn: row 1 stops there, the others run on
    got = gen.generate_rows(model, prompts, [0, 1, 0, 1], bank, N_NEW, eos, tok.pad_id, 4, "cpu")
    for f, g in zip(free, got):
        cut = f.index(eos) + 1 if eos in f else len(f)
        assert g[:cut] == f[:cut] and all(t == eos for t in g[cut:])
    want = tok.decode(free[1][:j], skip_special_tokens=True).strip()
    assert gen.decode_answer(tok, got[1], {eos}) == want and len(want) > 0


def test_greedy_equals_transformers_with_peft(tiny, tmp_path):
    peft = pytest.importorskip("peft")
    path, model, tok, prompts = tiny
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    cfg = peft.LoraConfig(r=8, lora_alpha=16, use_rslora=True, target_modules=["q_proj", "v_proj"], lora_dropout=0.0,
                          init_lora_weights=False, task_type="CAUSAL_LM")
    pm = peft.get_peft_model(hf, cfg, adapter_name="one")
    pm.add_adapter("two", cfg)
    bank = {"scale": lora_scale()}
    torch.manual_seed(1)
    for name in ("one", "two"):  # strong random adapters, copied into our per-example format
        for mod in pm.modules():
            if isinstance(mod, peft.tuners.lora.LoraLayer):
                for w in (mod.lora_A[name].weight, mod.lora_B[name].weight):
                    w.data = torch.randn_like(w) * 0.3
    for target in ("q_proj", "v_proj"):
        A = [[getattr(pm.base_model.model.model.layers[i].self_attn, target).lora_A[n].weight.detach().clone()
              for i in range(2)] for n in ("one", "two")]
        B = [[getattr(pm.base_model.model.model.layers[i].self_attn, target).lora_B[n].weight.detach().clone()
              for i in range(2)] for n in ("one", "two")]
        bank[target] = (torch.stack([torch.stack(x) for x in A]), torch.stack([torch.stack(x) for x in B]))
    rows = [0, 1, 1, 0]
    want = []
    for p, r in zip(prompts, rows):  # transformers + peft, one prompt and one adapter at a time
        pm.set_adapter(("one", "two")[r])
        ids = torch.tensor([p])
        out = pm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=N_NEW, do_sample=False,
                          eos_token_id=None, pad_token_id=tok.pad_id)
        want.append(out[0, len(p):].tolist())
    got = gen.generate_rows(model, prompts, rows, bank, N_NEW, None, tok.pad_id, 4, "cpu")
    assert got == want
    base = gen.generate_rows(model, prompts, [None] * 4, None, N_NEW, None, tok.pad_id, 4, "cpu")
    assert base != got  # the adapters change the tokens, so the comparison is not of two base models

"""t2l.py: parameter counts against the paper, the batched pass against a naive loop, bias-HyperInit,
gradients, description embeddings and their shared cache (concurrent writers, damage, a full disk), checkpoints,
the CLI (adapter export and the side-by-side generations against reference decodes). CPU-only, network-free."""
import json
import os
import re

import pytest
import torch

import t2l
from model import ModelConfig, Transformer
from t2l import HyperConfig, HyperNetwork

torch.set_num_threads(1)

MISTRAL = {"q_proj": (4096, 4096), "v_proj": (4096, 1024)}
# a module with d_out > d_in too, so slicing is checked in both directions
TINY = {"q_proj": (32, 32), "v_proj": (32, 16), "up": (8, 20)}


def tiny_hyper(size, emb_dim=32, n_layers=2, modules=None, dropout=0.0, seed=0):
    torch.manual_seed(seed)
    cfg = HyperConfig(size, emb_dim, n_layers, dict(modules or TINY), r=4, latent=16, head_in=24, dropout=dropout)
    return HyperNetwork(cfg), cfg


def randomize(net, seed=1):
    # away from bias-HyperInit (zero head weights), so every path carries signal
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def tiny_model(n_layers=2, dim=32, n_kv_heads=2, vocab=101, seed=0):
    cfg = ModelConfig(vocab_size=vocab, dim=dim, n_layers=n_layers, n_heads=4, n_kv_heads=n_kv_heads,
                      hidden_dim=48, name="tiny")
    torch.manual_seed(seed)
    m = Transformer(cfg)
    with torch.no_grad():
        for n, p in m.named_parameters():
            p.copy_(torch.randn_like(p) * 0.1 + (1.0 if "norm" in n else 0.0))
    return m.eval()


class CharTokenizer:  # stand-in for data.Tokenizer: encode(text) -> ids, no special tokens
    pad_id = 0

    def encode(self, text):
        return [1 + ord(c) % 100 for c in text]


@pytest.mark.parametrize("size,paper", [("large", 55.42e6), ("medium", 34.41e6), ("small", 4.99e6)])
def test_param_counts_match_paper(size, paper):
    cfg = HyperConfig(size, emb_dim=1024, n_layers=32, modules=MISTRAL)  # gte-large, Mistral-7B (T2L_NOTES 3)
    with torch.device("meta"):  # no memory, no init work
        net = HyperNetwork(cfg)
    n = sum(p.numel() for p in net.parameters())
    assert abs(n - paper) / paper < 0.005, f"{size}: {n:,} vs paper {paper:,.0f}"
    trunk = n - sum(p.numel() for p in net.heads.parameters())
    assert abs(trunk - 0.79e6) / 0.79e6 < 0.01


@pytest.mark.parametrize("size", t2l.SIZES)
def test_output_shapes(size):
    net, cfg = tiny_hyper(size)
    lora = net(torch.randn(3, cfg.emb_dim))
    assert list(lora) == list(TINY)
    for name, (d_in, d_out) in TINY.items():
        A, B = lora[name]
        assert A.shape == (3, cfg.n_layers, cfg.r, d_in) and B.shape == (3, cfg.n_layers, d_out, cfg.r)


@pytest.mark.parametrize("size", t2l.SIZES)
def test_init_gives_base_model(size):
    # bias-HyperInit: B == 0 exactly for every size; A is a Kaiming-uniform LoRA, the same for every layer
    net, cfg = tiny_hyper(size)
    lora = net(torch.randn(2, cfg.emb_dim))
    for name, (d_in, d_out) in TINY.items():
        A, B = lora[name]
        assert torch.equal(B, torch.zeros_like(B))
        assert A.abs().min() > 0 and A.abs().max() <= 1 / d_in ** 0.5  # nn.Linear(d_in, r) bound
        assert torch.equal(A, A[:1, :1].expand_as(A))  # independent of task and layer at step 0
        rows_differ = not torch.equal(A[0, 0, 0], A[0, 0, 1])
        assert rows_differ == (size != "small")  # small shares one bias row over the rank passes
    # plugged into the model, the generated adapters leave it unchanged
    model = tiny_model()
    net, cfg = tiny_hyper(size, modules=model.lora_shapes())
    ids = torch.randint(1, 101, (2, 9))
    with torch.no_grad():
        assert torch.equal(model(ids, lora=net(torch.randn(2, cfg.emb_dim))), model(ids))


@pytest.mark.parametrize("size", t2l.SIZES)
def test_batched_pass_matches_naive_loop(size):
    net, cfg = tiny_hyper(size)
    randomize(net)
    net.eval()
    e = torch.randn(2, cfg.emb_dim)
    lora = net(e)
    r, names = cfg.r, list(TINY)
    with torch.no_grad():
        for s in range(2):
            task = net.task_norm(net.task_proj(e[s]))
            for i, name in enumerate(names):
                d_in, d_out = TINY[name]
                head = net.heads[name]
                for layer in range(cfg.n_layers):
                    phi = torch.cat([task, net.layer_norm(net.layer_emb.weight[layer]),
                                     net.module_norm(net.module_emb.weight[i])])
                    x = net.mixer(phi)

                    def tail(x):
                        for block in net.blocks:
                            x = x + block(x)
                        return head.weight @ net.out(x)

                    A, B = lora[name][0][s, layer], lora[name][1][s, layer]
                    if size == "large":
                        y = tail(x) + head.bias
                        refA, refB = y[:r * d_in].view(r, d_in), y[r * d_in:].view(d_out, r)
                    elif size == "medium":
                        ab = net.ab_norm(net.ab_emb.weight)
                        refA = (tail(x + ab[0])[:r * d_in] + head.bias).view(r, d_in)
                        refB = tail(x + ab[1])[:r * d_out].view(d_out, r)
                    else:
                        ab, pe = net.ab_norm(net.ab_emb.weight), t2l.rank_signal(r, cfg.latent)
                        refA = torch.stack([tail(x + ab[0] + pe[k])[:d_in] + head.bias for k in range(r)])
                        refB = torch.stack([tail(x + ab[1] + pe[k])[:d_out] for k in range(r)], dim=1)
                    torch.testing.assert_close(A, refA, rtol=1e-5, atol=1e-5)
                    torch.testing.assert_close(B, refB, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", t2l.SIZES)
def test_gradients_reach_every_parameter(size):
    net, cfg = tiny_hyper(size, dropout=0.05)
    net.train()

    def loss_grads():
        net.zero_grad()
        g = torch.Generator().manual_seed(3)
        lora = net(torch.randn(2, cfg.emb_dim, generator=g))
        loss = sum((A * torch.randn(A.shape, generator=g)).sum() + (B * torch.randn(B.shape, generator=g)).sum()
                   for A, B in lora.values())
        loss.backward()
        return {n: p.grad for n, p in net.named_parameters()}

    # at init the zero head weights block the path to the trunk, but the heads themselves learn
    grads = loss_grads()
    for name in TINY:
        assert grads[f"heads.{name}.weight"].abs().sum() > 0 and grads[f"heads.{name}.bias"].abs().sum() > 0
    randomize(net)
    for n, grad in loss_grads().items():
        assert grad is not None and grad.abs().sum() > 0, n


def test_prepare_description():
    assert t2l.prepare_description("  Classify the review ") == "Classify the review."
    assert t2l.prepare_description("Is it true?") == "Is it true?"
    assert t2l.prepare_description("Answer with 1") == "Answer with 1"  # only letters get a "."
    for bad in ("", "   \n\t"):
        with pytest.raises(ValueError, match="^empty description$"):
            t2l.prepare_description(bad)
    with pytest.raises(TypeError):
        t2l.prepare_description(None)
    bad_bytes = b"r\xe9sum\xe9 the text".decode("utf-8", "surrogateescape")  # Latin-1 bytes on a command line
    with pytest.raises(ValueError, match="not valid UTF-8"):
        t2l.prepare_description(bad_bytes)


def test_embed_descriptions_is_last_token_and_padding_free():
    model, tok = tiny_model(), CharTokenizer()
    texts = ["Translate to French", "Sort the numbers given in the list in increasing order!", "Why?"]
    got = t2l.embed_descriptions(model, tok, texts, batch_size=2)  # mixed lengths: right padding in batch 1
    assert got.shape == (3, 32) and got.dtype == torch.float32
    for i, text in enumerate(texts):
        ids = torch.tensor([tok.encode(t2l.prepare_description(text))])
        with torch.no_grad():
            h = model.hidden(ids)[0, -1]  # alone, no padding: last token
        ref = h / h.norm() * 32 ** 0.5
        torch.testing.assert_close(got[i], ref, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="empty description"):
        t2l.embed_descriptions(model, tok, ["fine", " "])


def test_long_description_is_truncated_with_warning():
    model, tok = tiny_model(), CharTokenizer()
    with pytest.warns(UserWarning, match="truncated to 16"):
        got = t2l.embed_descriptions(model, tok, ["abcdefgh" * 4], max_tokens=16)
    ids = torch.tensor([tok.encode("abcdefgh" * 2)])  # the first 16 tokens
    with torch.no_grad():
        h = model.hidden(ids)[0, -1]
    torch.testing.assert_close(got[0], h / h.norm() * 32 ** 0.5, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("size", t2l.SIZES)
def test_checkpoint_round_trip(size, tmp_path):
    model = tiny_model()
    net, cfg = tiny_hyper(size, modules=model.lora_shapes())
    randomize(net)
    net.eval()
    opt = torch.optim.AdamW(net.parameters())
    net(torch.randn(1, 32))["q_proj"][0].sum().backward()
    opt.step()
    meta = t2l.base_model_meta(model, model_path="somewhere")
    t2l.save_checkpoint(tmp_path, net, cfg, meta, optimizer_state=opt.state_dict(), step=7, progress={"best": 1.5})
    assert sorted(os.listdir(tmp_path)) == ["latest", "step-000007"]
    assert sorted(os.listdir(tmp_path / "step-000007")) == ["config.json", "hypernet.safetensors", "optimizer.pt"]
    net2, cfg2, meta2 = t2l.load_checkpoint(tmp_path, model=model)
    assert cfg2 == cfg and meta2 == json.loads(json.dumps(meta)) and not net2.training
    assert all(p.requires_grad for p in net2.parameters())  # resumable: trainable parameters again
    e = torch.randn(2, 32)
    with torch.no_grad():
        for (A, B), (A2, B2) in zip(net(e).values(), net2(e).values()):
            assert torch.equal(A, A2) and torch.equal(B, B2)
    *_, state, step, progress = t2l.load_checkpoint(tmp_path, expect_meta=meta, with_optimizer=True)
    assert step == 7 and progress == {"best": 1.5} and torch.equal(state["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_mismatched_base_model_is_refused(tmp_path):
    model = tiny_model()
    net, cfg = tiny_hyper("large", modules=model.lora_shapes())
    t2l.save_checkpoint(tmp_path, net, cfg, t2l.base_model_meta(model))
    for other in (tiny_model(n_layers=3), tiny_model(n_kv_heads=4), tiny_model(vocab=103)):
        for kwargs in ({"model": other}, {"expect_meta": t2l.base_model_meta(other)}):  # CLI and resume
            with pytest.raises(ValueError, match="trained for base model 'tiny'") as err:
                t2l.load_checkpoint(tmp_path, **kwargs)
            assert "\n" not in str(err.value)


def test_corrupt_checkpoint_is_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint file missing"):
        t2l.load_checkpoint(tmp_path)
    net, cfg = tiny_hyper("small")
    t2l.save_checkpoint(tmp_path, net, cfg, {})
    (tmp_path / "step-000000" / "hypernet.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="corrupt checkpoint weights"):
        t2l.load_checkpoint(tmp_path)


def test_checkpoints_keep_latest_and_previous(tmp_path):
    net, cfg = tiny_hyper("small")
    for step in (10, 20, 30):
        t2l.save_checkpoint(tmp_path, net, cfg, {}, step=step)
    assert sorted(os.listdir(tmp_path)) == ["latest", "step-000020", "step-000030"]
    # a run killed while writing step 40 (folder half written, pointer not moved) still loads step 30
    (tmp_path / "step-000040").mkdir()
    (tmp_path / "step-000040" / "hypernet.safetensors").write_bytes(b"half")
    assert t2l.load_checkpoint(tmp_path, with_optimizer=True)[-2] == 30


def test_config_json_round_trip():
    cfg = HyperConfig("medium", 576, 30, {"q_proj": (576, 576), "v_proj": (576, 192)})
    assert HyperConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="size"):
        HyperConfig("huge", 576, 30, {})


def test_cli_rejects_empty_description(tmp_path, capsys):
    assert t2l.main(["--ckpt", str(tmp_path), "--out", str(tmp_path / "a"), "   "]) == 1
    err = capsys.readouterr().err
    assert err == "error: empty description\n"


def hf_folder(path, n_layers=2):
    # a tiny random Llama checkpoint + a character-level tokenizer: what prepare.py puts in assets/models/
    transformers = pytest.importorskip("transformers")
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=101, hidden_size=64, intermediate_size=96, num_hidden_layers=n_layers,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    transformers.LlamaForCausalLM(cfg).save_pretrained(path, safe_serialization=True)
    vocab = {"<unk>": 0, **{chr(i): i - 31 for i in range(32, 127)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<unk>", "pad_token": "<unk>"}))
    return path


def test_cli_writes_the_adapter_the_hypernetwork_generates(tmp_path, capsys):
    data = pytest.importorskip("data")
    import lora
    model_dir, other = hf_folder(tmp_path / "model"), hf_folder(tmp_path / "other", n_layers=3)
    capsys.readouterr()  # transformers' progress bars
    model = Transformer.from_pretrained(model_dir)
    net, cfg = tiny_hyper("medium", emb_dim=64, modules=model.lora_shapes())
    randomize(net, seed=5)  # a trained-looking hypernetwork: the adapter changes the model
    t2l.save_checkpoint(tmp_path / "run", net, cfg, t2l.base_model_meta(model, model_path=model_dir, lora_alpha=16))
    desc = "Translate the sentence from English to French"
    rc = t2l.main(["--ckpt", str(tmp_path / "run"), "--out", str(tmp_path / "adapter"), "--dtype", "fp32", desc])
    out = capsys.readouterr().out
    assert rc == 0 and "embedding" in out and "hypernetwork" in out and " ms" in out
    # the exported adapter, applied as a static LoRA, equals the per-example adapter from the hypernetwork
    ids = torch.randint(1, 101, (1, 10))
    with torch.no_grad():
        emb = t2l.embed_descriptions(model, data.Tokenizer(model_dir), [desc])
        per_example = model(ids, lora={**net.eval()(emb), "scale": lora.lora_scale(cfg.r, 16)})
        static = Transformer.from_pretrained(model_dir)
        lora.load_adapter(static, tmp_path / "adapter")
        assert (per_example - model(ids)).abs().max() > 1e-3  # it does change the model
        torch.testing.assert_close(static(ids), per_example, rtol=1e-4, atol=1e-4)
    # another base model: one line, exit 1
    rc = t2l.main(["--ckpt", str(tmp_path / "run"), "--out", str(tmp_path / "a2"), "--model", str(other), desc])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("error: the hypernetwork was trained for base model") and err.count("\n") == 1


CHAT = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endfor %}" \
       "{% if add_generation_prompt %}<assistant>{% endif %}"


def files_under(path):
    return sorted(str(p) for p in path.rglob("*"))


def reference_decode(model, tok, ids, max_new_tokens):
    # greedy decoding of one prompt with whatever static adapter the model holds, cut at the end of the turn
    new = model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, eos_id=tok.eos_id)[0].tolist()
    cut = new.index(tok.eos_id) if tok.eos_id in new else len(new)
    return tok.decode(new[:cut], skip_special_tokens=True).strip()


def printed_columns(out, width=1000):
    # the two columns of each prompt's first text line (COLUMNS=1000: nothing wraps)
    w = (width - 3) // 2
    lines = out.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("[")]
    return [(lines[i + 3][:w].rstrip(), lines[i + 3][w + 3:]) for i in starts]


def test_cli_side_by_side_equals_base_and_static_adapter_decoding(tmp_path, capsys, monkeypatch):
    data = pytest.importorskip("data")
    import lora
    model_dir = hf_folder(tmp_path / "model")
    cfg_path = model_dir / "tokenizer_config.json"
    cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), "chat_template": CHAT}))
    capsys.readouterr()
    model = Transformer.from_pretrained(model_dir).eval()
    net, cfg = tiny_hyper("large", emb_dim=64, modules=model.lora_shapes())
    randomize(net, seed=5)
    t2l.save_checkpoint(tmp_path / "run", net, cfg, t2l.base_model_meta(model, model_path=model_dir))
    desc, prompts = "Reverse the letters of the word", ["hello there", "abc"]
    (tmp_path / "prompts.txt").write_text("hello there\n\nabc\n")  # blank lines are skipped
    monkeypatch.setenv("COLUMNS", "1000")
    before = files_under(tmp_path)
    args = ["--ckpt", str(tmp_path / "run"), "--dtype", "fp32", "--max-new-tokens", "12", desc]
    assert t2l.main(args + ["--prompt", prompts[0], "--prompt", prompts[1]]) == 0
    out = capsys.readouterr().out
    assert files_under(tmp_path) == before  # no --out: nothing written
    assert "not written (no --out)" in out and re.search(r"base model \([\d.]+ s\) +\| T2L adapter \([\d.]+ s\)", out)
    got = printed_columns(out)
    assert t2l.main(args + ["--prompts-file", str(tmp_path / "prompts.txt")]) == 0
    assert printed_columns(capsys.readouterr().out) == got
    # references: the base model's own greedy decode; decoding with the adapter set as a static LoRA
    tok = data.Tokenizer(model_dir)
    ids = [tok.encode(tok.chat([{"role": "user", "content": data.sni_prompt(desc + ".", p)}])) for p in prompts]
    with torch.no_grad():
        base = [reference_decode(model, tok, x, 12) for x in ids]
        adapters = net.eval()(t2l.embed_descriptions(model, tok, [desc]))
        lora.set_adapters(model, {k: (A[0], B[0]) for k, (A, B) in adapters.items()}, cfg.r, 16, True)
        adapted = [reference_decode(model, tok, x, 12) for x in ids]
    assert got == list(zip(base, adapted)) and base != adapted  # the adapter changes what the model says
    # with --out the PEFT adapter is written too, and decoding with it loaded gives the same column
    assert t2l.main(args + ["--prompt", prompts[0], "--out", str(tmp_path / "adapter")]) == 0
    assert "adapter written to" in capsys.readouterr().out
    static = Transformer.from_pretrained(model_dir).eval()
    lora.load_adapter(static, tmp_path / "adapter")
    with torch.no_grad():
        assert reference_decode(static, tok, ids[0], 12) == adapted[0]


@pytest.mark.parametrize("extra,message", [
    (["   ", "--prompt", "x"], "empty description"),
    (["Do it", "--prompt", "x", "--prompt", " "], "--prompt number 2 is empty"),
    (["Do it", "--prompts-file", "MISSING"], "prompts file .*MISSING not found"),
    (["Do it", "--prompts-file", "EMPTY"], "has no prompts"),
    (["Do it"], "nothing to do"),
    (["Do it", "--prompt", "x", "--max-new-tokens", "0"], "at least 1"),
])
def test_cli_bad_inputs_give_one_line(tmp_path, capsys, extra, message):
    (tmp_path / "EMPTY").write_text("\n  \n")
    extra = [str(tmp_path / a) if a in ("MISSING", "EMPTY") else a for a in extra]
    before = files_under(tmp_path)
    assert t2l.main(["--ckpt", str(tmp_path / "no-run")] + extra) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and re.search(message, err), err
    assert files_under(tmp_path) == before

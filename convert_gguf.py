"""
GGUF -> Hugging Face folder, for Llama-family models (SmolLM2, Llama, ...).

llama.cpp's GGUF is one file holding metadata (hyperparameters, vocabulary, merges, chat template) and
quantized tensors. We read it with a small reader written here, dequantize to float32, undo llama.cpp's
Q/K row permutation, and write a standard folder (config.json, model.safetensors, tokenizer.json,
tokenizer_config.json, special_tokens_map.json, generation_config.json) that model.py and
transformers.AutoModelForCausalLM both load. Format reference: ggml's docs/gguf.md.

    python convert_gguf.py SmolLM2-135M-Instruct.Q4_1.gguf assets/models/SmolLM2-135M-Instruct
"""
import json
import os
import struct
import sys

import numpy as np
from safetensors.numpy import save_file
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

# -----------------------------------------------------------------------------
# reading the file

# metadata value types -> struct format (8 = string, 9 = array are handled by hand)
SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


class _Cursor:
    def __init__(self, buf):
        self.buf, self.pos = buf, 0

    def take(self, n):
        if self.pos + n > len(self.buf):
            raise ValueError("truncated GGUF file (header ends early)")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def scalar(self, fmt):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self):
        return bytes(self.take(self.scalar("<Q"))).decode("utf-8", errors="replace")

    def value(self, vtype):
        if vtype == 8:
            return self.string()
        if vtype == 9:
            etype, n = self.scalar("<I"), self.scalar("<Q")
            if etype in SCALARS and etype != 7:  # numeric arrays (e.g. 49152 token types) in one go
                dt = np.dtype(SCALARS[etype])
                return np.frombuffer(self.take(n * dt.itemsize), dtype=dt).tolist()
            return [self.value(etype) for _ in range(n)]
        if vtype not in SCALARS:
            raise ValueError(f"corrupt GGUF file: unknown metadata value type {vtype}")
        return self.scalar(SCALARS[vtype])


def read_gguf(path):
    """Returns (metadata dict, {name: (ggml_type, gguf_dims, raw uint8 array)}); tensor bytes stay memory-mapped."""
    if os.path.getsize(path) < 24:
        raise ValueError(f"'{path}' is not a GGUF file (too short)")
    buf = np.memmap(path, dtype=np.uint8, mode="r")
    cur = _Cursor(memoryview(buf))
    if bytes(buf[:4]) != b"GGUF":
        raise ValueError(f"'{path}' is not a GGUF file (bad magic)")
    cur.pos = 4
    version = cur.scalar("<I")
    if version not in (2, 3):
        raise ValueError(f"unsupported GGUF version {version} (supported: 2, 3)")
    n_tensors, n_kv = cur.scalar("<Q"), cur.scalar("<Q")
    meta = {}
    for _ in range(n_kv):
        key = cur.string()
        meta[key] = cur.value(cur.scalar("<I"))
    infos = []
    for _ in range(n_tensors):
        name = cur.string()
        dims = [cur.scalar("<Q") for _ in range(cur.scalar("<I"))]
        infos.append((name, dims, cur.scalar("<I"), cur.scalar("<Q")))  # offset is relative to the data section
    align = meta.get("general.alignment", 32)
    start = (cur.pos + align - 1) // align * align
    tensors = {}
    for name, dims, gtype, offset in infos:
        n = int(np.prod(dims))
        if gtype not in GGML_TYPES:
            kind = GGML_NAMES[gtype] if gtype < len(GGML_NAMES) else f"type {gtype}"
            raise ValueError(f"tensor '{name}' is {kind}, a quantization this converter does not read "
                             f"(supported: {', '.join(t[0] for t in GGML_TYPES.values())})")
        _, block, nbytes = GGML_TYPES[gtype]
        size = n // block * nbytes
        if start + offset + size > len(buf):
            raise ValueError(f"truncated GGUF file (tensor '{name}' runs past the end)")
        tensors[name] = (gtype, dims, buf[start + offset:start + offset + size])
    return meta, tensors


# -----------------------------------------------------------------------------
# dequantization: every type is a run of fixed-size blocks; decode all blocks at once

GGML_TYPES = {0: ("F32", 1, 4), 1: ("F16", 1, 2), 3: ("Q4_1", 32, 20), 8: ("Q8_0", 32, 34), 30: ("BF16", 1, 2)}  # name, elems/block, bytes/block
GGML_NAMES = ("F32 F16 Q4_0 Q4_1 Q4_2 Q4_3 Q5_0 Q5_1 Q8_0 Q8_1 Q2_K Q3_K Q4_K Q5_K Q6_K Q8_K IQ2_XXS IQ2_XS IQ3_XXS "
              "IQ1_S IQ4_NL IQ3_S IQ2_S IQ4_XS I8 I16 I32 I64 F64 IQ1_M BF16").split()  # ggml type ids 0..30, for errors
Q8_0 = np.dtype([("d", "<f2"), ("qs", "i1", 32)])  # x = d * q
Q4_1 = np.dtype([("d", "<f2"), ("m", "<f2"), ("qs", "u1", 16)])  # x = d * q + m, q in 0..15


def dequantize(raw, gtype):
    """raw uint8 bytes of one tensor -> flat float32 array"""
    raw = np.ascontiguousarray(raw)
    if gtype == 0:
        return raw.view("<f4").astype(np.float32)
    if gtype == 1:
        return raw.view("<f2").astype(np.float32)
    if gtype == 30:  # bf16 is the top half of a float32
        return (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)
    if gtype == 8:
        b = raw.view(Q8_0)  # (n_blocks,)
        return (b["d"].astype(np.float32)[:, None] * b["qs"].astype(np.float32)).ravel()  # (n_blocks, 32)
    if gtype == 3:
        b = raw.view(Q4_1)
        # byte j holds element j in its low nibble and element j+16 in its high nibble
        q = np.concatenate([b["qs"] & 0x0F, b["qs"] >> 4], axis=1).astype(np.float32)  # (n_blocks, 32)
        return (b["d"].astype(np.float32)[:, None] * q + b["m"].astype(np.float32)[:, None]).ravel()
    raise ValueError(f"unsupported ggml tensor type {gtype}")


def unpermute(w, n_heads):
    # llama.cpp stores Q/K rows of each head as interleaved (x0, x_half, x1, x_half+1, ...) pairs for its
    # "rotate adjacent pairs" RoPE: hf -> gguf is reshape(nh, 2, hd/2, ...).swapaxes(1, 2). We invert it so
    # the rows are back in HF's "rotate halves" order.
    return w.reshape(n_heads, w.shape[0] // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# -----------------------------------------------------------------------------
# names and config

BLOCK_NAMES = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
               "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
               "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def hf_name(name):
    base, _, kind = name.rpartition(".")  # kind: weight | bias
    parts = base.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in BLOCK_NAMES:
        return f"model.layers.{parts[1]}.{BLOCK_NAMES[parts[2]]}.{kind}"
    if base in TOP_NAMES:
        return f"{TOP_NAMES[base]}.{kind}"
    raise ValueError(f"GGUF tensor '{name}' has no Hugging Face Llama name (unsupported model variant)")


def f32(x):
    return float(str(np.float32(x)))  # GGUF stores float32: 1e-5 reads back as 9.9999997e-06; keep the short decimal


def hf_config(meta, tied, bias):
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise ValueError(f"unsupported GGUF architecture '{arch}' (supported: llama)")
    g = lambda k, default=None: meta.get(f"llama.{k}", default)
    dim, n_heads = g("embedding_length"), g("attention.head_count")
    tok = lambda k: meta.get(f"tokenizer.ggml.{k}")
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": dim, "intermediate_size": g("feed_forward_length"),
        "num_hidden_layers": g("block_count"), "num_attention_heads": n_heads,
        "num_key_value_heads": g("attention.head_count_kv", n_heads),
        "head_dim": g("attention.key_length", dim // n_heads),
        "rms_norm_eps": f32(g("attention.layer_norm_rms_epsilon", 1e-5)), "rope_theta": f32(g("rope.freq_base", 1e4)), "max_position_embeddings": g("context_length"),
        "vocab_size": g("vocab_size") or len(meta["tokenizer.ggml.tokens"]),
        "tie_word_embeddings": tied, "attention_bias": bias, "mlp_bias": False, "hidden_act": "silu",
        "bos_token_id": tok("bos_token_id"), "eos_token_id": tok("eos_token_id"),
        "pad_token_id": tok("padding_token_id"), "torch_dtype": "float32",
    }


# -----------------------------------------------------------------------------
# tokenizer

def build_tokenizer(meta):
    if meta.get("tokenizer.ggml.model") != "gpt2":
        raise ValueError(f"unsupported GGUF tokenizer model '{meta.get('tokenizer.ggml.model')}' (supported: gpt2)")
    pre = meta.get("tokenizer.ggml.pre", "default")
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)  # GPT-2's split regex
    pre_tok = {"smollm": pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level]),
               "default": byte_level, "gpt-2": byte_level}.get(pre)  # llama.cpp's pre-type names
    if pre_tok is None:
        raise ValueError(f"unsupported GGUF tokenizer pre-type '{pre}' (supported: smollm, gpt-2, default)")
    tokens, types = meta["tokenizer.ggml.tokens"], meta.get("tokenizer.ggml.token_type", [])
    # tokens are already spelled in GPT-2's byte-to-unicode alphabet ("Ġthe"), merges are "a b" strings
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
    tk = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges, fuse_unk=False))
    tk.pre_tokenizer = pre_tok
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.ByteLevel(trim_offsets=False)
    # control (3) and user-defined (4) tokens must be matched whole in raw text, before BPE; they are already
    # in the vocab, so they keep their ids. Control tokens are special (skipped by decode(skip_special_tokens)).
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == 3])
    tk.add_tokens([AddedToken(t, special=False, normalized=False) for t, ty in zip(tokens, types) if ty == 4])
    return tk


# -----------------------------------------------------------------------------

def convert(gguf_path, out_dir):
    meta, raw = read_gguf(gguf_path)
    tied = "output.weight" not in raw
    config = hf_config(meta, tied, bias="blk.0.attn_q.bias" in raw)
    n_heads, n_kv = config["num_attention_heads"], config["num_key_value_heads"]
    weights = {}
    for name, (gtype, dims, data) in raw.items():
        w = dequantize(data, gtype).reshape(dims[::-1])  # GGUF lists the fastest axis first: (out, in) in torch
        if ".attn_q." in name:
            w = unpermute(w, n_heads)  # (n_heads * head_dim, dim)
        elif ".attn_k." in name:
            w = unpermute(w, n_kv)  # (n_kv_heads * head_dim, dim)
        weights[hf_name(name)] = np.ascontiguousarray(w, dtype=np.float32)
    tokens = meta["tokenizer.ggml.tokens"]
    name_of = lambda i: tokens[i] if i is not None and 0 <= i < len(tokens) else None
    bos, eos, pad = config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]
    specials = {"bos_token": name_of(bos), "eos_token": name_of(eos), "pad_token": name_of(pad),
                "unk_token": name_of(meta.get("tokenizer.ggml.unknown_token_id"))}
    tok_config = {**specials, "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
                  "add_eos_token": bool(meta.get("tokenizer.ggml.add_eos_token", False)),
                  "model_max_length": config["max_position_embeddings"], "tokenizer_class": "GPT2Tokenizer",
                  "clean_up_tokenization_spaces": False}
    if "tokenizer.chat_template" in meta:
        tok_config["chat_template"] = meta["tokenizer.chat_template"]
    tokenizer = build_tokenizer(meta)

    os.makedirs(out_dir, exist_ok=True)
    dump = lambda obj, fname: json.dump(obj, open(os.path.join(out_dir, fname), "w", encoding="utf-8"), indent=2, ensure_ascii=False)
    dump(config, "config.json")
    dump(tok_config, "tokenizer_config.json")
    dump({k: v for k, v in specials.items() if v is not None}, "special_tokens_map.json")
    dump({"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": pad}, "generation_config.json")
    tokenizer.save(os.path.join(out_dir, "tokenizer.json"))
    save_file(weights, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    kinds = sorted({GGML_TYPES[t][0] for t, _, _ in raw.values()})
    n_params = sum(w.size for w in weights.values())
    print(f"converted {os.path.basename(gguf_path)} ({'/'.join(kinds)}) -> {out_dir}: {n_params / 1e6:.1f}M params, "
          f"{config['num_hidden_layers']} layers, dim {config['hidden_size']}, {n_heads}/{n_kv} heads, "
          f"vocab {config['vocab_size']}, tied={tied}")
    return out_dir


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python convert_gguf.py FILE.gguf OUT_DIR")
    try:
        convert(sys.argv[1], sys.argv[2])
    except (ValueError, OSError) as e:
        sys.exit(f"error: {e}")

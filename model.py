"""
A Llama-family decoder-only transformer, written out by hand, that loads Hugging Face checkpoints
unchanged: Llama 2/3.x (incl. llama3 RoPE scaling), Mistral, SmolLM/SmolLM2, Qwen2 (q/k/v biases).

    RMSNorm -> attention (RoPE, grouped-query, SDPA) -> RMSNorm -> SwiGLU MLP, residuals around both.

Module names follow the HF checkpoint (model.layers.{i}.self_attn.q_proj ...), so weights load with
strict key and shape checking and no renaming table, and PEFT adapter keys are just a prefix away.
q_proj and v_proj are LoRALinear: they take per-example adapters as tensors (see lora.py).

    from model import Transformer
    m = Transformer.from_pretrained("assets/models/SmolLM2-135M-Instruct", dtype=torch.bfloat16)
    logits = m(input_ids, attention_mask)  # (B, T, vocab)
"""
import json
import math
import os
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open

from lora import LoRALinear, lora_scale

ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")


@dataclass
class ModelConfig:
    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    hidden_dim: int
    head_dim: int = 0
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict = None
    qkv_bias: bool = False
    tie_embeddings: bool = False
    sliding_window: int = None
    max_seq_len: int = 4096
    name: str = ""
    extra: dict = field(default_factory=dict)  # eos/bos/pad ids, for generation

    def __post_init__(self):
        self.head_dim = self.head_dim or self.dim // self.n_heads

    @classmethod
    def from_hf(cls, c, name=""):
        arch = (c.get("architectures") or ["?"])[0]
        if arch not in ARCHITECTURES:
            raise ValueError(f"unsupported architecture '{arch}' in config.json (supported: {', '.join(ARCHITECTURES)})")
        rs = c.get("rope_scaling") or c.get("rope_parameters")  # transformers 5 names it rope_parameters
        theta = c.get("rope_theta") or (rs or {}).get("rope_theta", 10000.0)
        if rs and rs.get("rope_type", rs.get("type")) in (None, "default"):
            rs = None
        if rs and rs.get("rope_type", rs.get("type")) != "llama3":
            raise ValueError(f"unsupported rope_scaling {rs} (supported: llama3)")
        use_sw = c.get("use_sliding_window", arch == "MistralForCausalLM")
        return cls(vocab_size=c["vocab_size"], dim=c["hidden_size"], n_layers=c["num_hidden_layers"],
                   n_heads=c["num_attention_heads"], n_kv_heads=c.get("num_key_value_heads") or c["num_attention_heads"],
                   hidden_dim=c["intermediate_size"], head_dim=c.get("head_dim") or 0,
                   norm_eps=c.get("rms_norm_eps", 1e-6), rope_theta=theta,
                   rope_scaling=rs, qkv_bias=arch == "Qwen2ForCausalLM" or c.get("attention_bias", False),
                   tie_embeddings=c.get("tie_word_embeddings", False),
                   sliding_window=c.get("sliding_window") if use_sw else None,
                   max_seq_len=c.get("max_position_embeddings", 4096), name=name,
                   extra={k: c.get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")})


def rope_frequencies(cfg):
    inv_freq = 1.0 / cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float32) / cfg.head_dim)
    rs = cfg.rope_scaling
    if rs:  # llama3: slow down low frequencies by `factor`, keep high ones, interpolate in between
        factor, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
        old_len = rs["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        smooth = ((old_len / wavelen - lo) / (hi - lo)).clamp(0, 1)
        scaled = (1 - smooth) * inv_freq / factor + smooth * inv_freq
        inv_freq = torch.where(wavelen > old_len / lo, inv_freq / factor,
                               torch.where(wavelen < old_len / hi, inv_freq, scaled))
    return inv_freq  # (head_dim/2,)


def apply_rope(x, cos, sin):
    # half-split convention (HF "rotate_half"): pairs are (i, i + head_dim/2), so HF weights load unchanged
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # normalise in fp32 and cast back before the weight, as the HF reference does (matters in bf16)
        xf = x.float()
        return self.weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.nh, self.nkv, self.hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.q_proj = LoRALinear(cfg.dim, self.nh * self.hd, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.dim, self.nkv * self.hd, bias=cfg.qkv_bias)
        self.v_proj = LoRALinear(cfg.dim, self.nkv * self.hd, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(self.nh * self.hd, cfg.dim, bias=False)

    def forward(self, x, cos, sin, mask, lora, layer, cache):
        B, T, _ = x.shape
        qa, qb, va, vb, scale = _lora_args(lora, layer)
        q = self.q_proj(x, qa, qb, scale).view(B, T, self.nh, self.hd).transpose(1, 2)  # (B, nh, T, hd)
        k = self.k_proj(x).view(B, T, self.nkv, self.hd).transpose(1, 2)  # (B, nkv, T, hd)
        v = self.v_proj(x, va, vb, scale).view(B, T, self.nkv, self.hd).transpose(1, 2)  # (B, nkv, T, hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, nkv, S, hd) with S = past + T
        # grouped-query attention: each kv head serves nh/nkv query heads
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and T > 1,
                                           enable_gqa=self.nkv != self.nh)  # (B, nh, T, hd)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.nh * self.hd))


def _lora_args(lora, layer):
    if lora is None:
        return None, None, None, None, None
    qa, qb = lora["q_proj"] if "q_proj" in lora else (None, None)
    va, vb = lora["v_proj"] if "v_proj" in lora else (None, None)
    pick = lambda t: None if t is None else t[:, layer]  # (B, L, ...) -> (B, ...)
    return pick(qa), pick(qb), pick(va), pick(vb), lora.get("scale", lora_scale())


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False)
        self.up_proj = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False)
        self.down_proj = nn.Linear(cfg.hidden_dim, cfg.dim, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))  # SwiGLU


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, mask, lora, layer, cache):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, lora, layer, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class KVCache:
    """Keys and values of every layer, preallocated for max_len positions."""

    def __init__(self, cfg, batch, max_len, device, dtype):
        shape = (batch, cfg.n_kv_heads, max_len, cfg.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.pos = 0  # positions filled so far; advanced by the model after the last layer

    def expand(self, repeats, extra):
        """A cache whose row i is this cache's row repeats[i]-fold (a shared prompt, scored with several
        continuations), with room for `extra` more positions."""
        new = KVCache.__new__(KVCache)
        grow = lambda t: F.pad(t[:, :, :self.pos].repeat_interleave(repeats, 0), (0, 0, 0, extra))
        new.k, new.v, new.pos = [grow(t) for t in self.k], [grow(t) for t in self.v], self.pos
        return new

    def update(self, layer, k, v):
        T = k.shape[2]
        self.k[layer][:, :, self.pos:self.pos + T] = k
        self.v[layer][:, :, self.pos:self.pos + T] = v
        return self.k[layer][:, :, :self.pos + T], self.v[layer][:, :, :self.pos + T]


class Decoder(nn.Module):  # HF's "model." prefix: embed_tokens, layers, norm
    def __init__(self, cfg):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)


class Transformer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.model = Decoder(cfg)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.register_buffer("inv_freq", rope_frequencies(cfg), persistent=False)

    def lora_shapes(self):
        a = self.model.layers[0].self_attn
        return {"q_proj": (a.q_proj.in_features, a.q_proj.out_features),
                "v_proj": (a.v_proj.in_features, a.v_proj.out_features)}

    def hidden(self, input_ids, attention_mask=None, lora=None, cache=None, embeds=None):
        """Final-normed hidden states (B, T, dim). attention_mask: (B, past + T), 1 = token, 0 = pad.
        lora: {"q_proj": (A (B, L, r, d_in), B (B, L, d_out, r)), "v_proj": ..., ["scale": float]}."""
        x = self.model.embed_tokens(input_ids) if embeds is None else embeds  # (B, T, dim)
        B, T = x.shape[:2]
        past = cache.pos if cache is not None else 0
        S = past + T
        if attention_mask is None:
            pos = torch.arange(past, S, device=x.device).expand(B, T)
        else:
            # positions count real tokens only, so a left-padded row gets the same positions as unpadded
            pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past:]  # (B, T)
        freqs = pos[..., None].float() * self.inv_freq  # (B, T, hd/2)
        emb = torch.cat((freqs, freqs), dim=-1)[:, None]  # (B, 1, T, hd)
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
        mask = self._mask(attention_mask, B, T, past, x.device)
        for i, layer in enumerate(self.model.layers):
            x = layer(x, cos, sin, mask, lora, i, cache)
        if cache is not None:
            cache.pos = S
        return self.model.norm(x)

    def _mask(self, attention_mask, B, T, past, device):
        sw = self.config.sliding_window
        S = past + T
        if attention_mask is not None and past == 0 and bool((attention_mask[:, :-1] >= attention_mask[:, 1:]).all()):
            # no padding, or right padding only: a real token never sees a later pad under the causal mask, so the
            # plain causal path (SDPA's fast kernel) is exact for every real position; pad outputs are never used
            attention_mask = None
        if attention_mask is None and past == 0 and (sw is None or S <= sw):
            return None  # plain causal: SDPA's fast path
        qi = torch.arange(past, S, device=device)[:, None]
        ki = torch.arange(S, device=device)[None, :]
        allowed = ki <= qi  # (T, S) causal
        if sw is not None:
            allowed = allowed & (ki > qi - sw)
        allowed = allowed[None, None]  # (1, 1, T, S)
        if attention_mask is not None:
            allowed = allowed & attention_mask.bool()[:, None, None, :S]  # (B, 1, T, S)
            # a pad query would attend to nothing (NaN in softmax): let it see itself; its output is ignored
            allowed = allowed | (ki == qi)[None, None]
        return allowed

    def forward(self, input_ids, attention_mask=None, lora=None, cache=None):
        return self.lm_head(self.hidden(input_ids, attention_mask, lora, cache))  # (B, T, vocab)

    @torch.no_grad()
    def generate(self, input_ids, attention_mask=None, max_new_tokens=32, temperature=0.0, top_k=None,
                 eos_id=None, lora=None, generator=None):
        """Greedy (temperature 0) or sampled decoding with a KV cache. Left-pad batched prompts.
        Returns the new tokens (B, n); rows that hit eos_id are padded with eos_id after it."""
        B, T = input_ids.shape
        p = next(self.parameters())
        cache = KVCache(self.config, B, T + max_new_tokens, p.device, p.dtype)
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        x, out = input_ids, []
        done = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
        for _ in range(max_new_tokens):
            logits = self.lm_head(self.hidden(x, mask, lora, cache)[:, -1]).float()  # (B, vocab)
            if temperature == 0:
                nxt = logits.argmax(-1)
            else:
                logits = logits / temperature
                if top_k:
                    kth = logits.topk(top_k, dim=-1).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                nxt = torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]
            if eos_id is not None:
                nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
                done = done | (nxt == eos_id)
            out.append(nxt)
            if eos_id is not None and bool(done.all()):
                break
            x = nxt[:, None]
            mask = torch.cat([mask, torch.ones_like(x)], dim=1)
        return torch.stack(out, dim=1)

    @classmethod
    def from_pretrained(cls, path, device="cpu", dtype=torch.float32):
        cfg_path = os.path.join(path, "config.json")
        if not os.path.isfile(cfg_path):
            raise FileNotFoundError(f"no config.json in model folder '{path}' (run: python prepare.py)")
        try:
            with open(cfg_path) as f:
                cfg = ModelConfig.from_hf(json.load(f), name=os.path.basename(os.path.normpath(path)))
        except (json.JSONDecodeError, KeyError) as e:
            raise ValueError(f"corrupt config.json in '{path}': {e}") from None
        with torch.device("meta"):
            model = cls(cfg)
        state = load_safetensors(path)
        expected = {k: v for k, v in model.state_dict().items()}
        if cfg.tie_embeddings:
            expected.pop("lm_head.weight")
            state.pop("lm_head.weight", None)  # some tied checkpoints store a copy
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise ValueError(f"checkpoint in '{path}' does not fit the config: "
                             f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
                             f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}")
        for k, v in expected.items():
            if tuple(state[k].shape) != tuple(v.shape):
                raise ValueError(f"tensor {k} has shape {tuple(state[k].shape)}, config says {tuple(v.shape)}")
        state = {k: v.to(device=device, dtype=dtype) for k, v in state.items()}
        model.load_state_dict(state, strict=False, assign=True)  # strictness checked above, with better messages
        if cfg.tie_embeddings:
            model.lm_head.weight = model.model.embed_tokens.weight
        model.inv_freq = rope_frequencies(cfg).to(device)
        return model.eval()


def compile_model(model, device):
    """torch.compile the forward pass (dynamic shapes: batches vary in length) where a compiler backend exists:
    a C++ compiler on CPU ($CXX, else g++), triton on CUDA. -> None, or why it cannot (the caller runs uncompiled)."""
    import importlib.util
    import shutil
    if str(device).startswith("cuda"):
        if importlib.util.find_spec("triton") is None:
            return "triton is not installed"
    elif shutil.which(os.environ.get("CXX", "g++")) is None:
        return f"no C++ compiler '{os.environ.get('CXX', 'g++')}' on PATH"
    model.hidden = torch.compile(model.hidden, dynamic=True)
    return None


def load_safetensors(path):
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    elif os.path.isfile(os.path.join(path, "model.safetensors")):
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(f"no model.safetensors (or index) in '{path}' (run: python prepare.py)")
    state = {}
    for name in files:
        try:
            with safe_open(os.path.join(path, name), framework="pt") as f:
                for k in f.keys():
                    state[k] = f.get_tensor(k)
        except Exception as e:  # safetensors raises several types for truncated or garbage files
            raise ValueError(f"corrupt safetensors file '{os.path.join(path, name)}': {e}") from None
    return state

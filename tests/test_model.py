"""model.py against transformers on tiny random Llama, Mistral and Qwen2 checkpoints (and the real model)."""
import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
from model import Transformer  # noqa: E402

torch.set_num_threads(1)

TINY = dict(vocab_size=101, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5)


def hf_model(arch, tmp_path, **extra):
    cls = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
           "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
           "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM)}[arch]
    torch.manual_seed(0)
    model = cls[1](cls[0](**{**TINY, **extra})).eval()
    with torch.no_grad():  # random norms too, so a misplaced weight cannot hide behind ones
        for n, p in model.named_parameters():
            if "norm" in n:
                p.uniform_(0.5, 1.5)
            elif "bias" in n:
                p.normal_(0, 0.1)
    model.save_pretrained(tmp_path, safe_serialization=True)
    return model


CASES = [("llama", {}), ("llama", {"tie_word_embeddings": True}),
         ("llama", {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                     "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
                    "rope_theta": 500000.0}),
         ("mistral", {"sliding_window": None}), ("mistral", {"sliding_window": 5}), ("qwen2", {})]


def batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 101, (3, 12), generator=g)
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, :4] = 0  # left padding
    mask[2, 9:] = 0  # right padding
    return ids, mask


@pytest.mark.parametrize("arch,extra", CASES, ids=[f"{a}-{i}" for i, (a, _) in enumerate(CASES)])
def test_logits_match_transformers(arch, extra, tmp_path):
    hf = hf_model(arch, tmp_path, **extra)
    ours = Transformer.from_pretrained(tmp_path)
    ids, mask = batch()
    with torch.no_grad():
        ref = hf(ids).logits
        assert (ours(ids) - ref).abs().max() <= 1e-5  # no padding
        # with padding: HF takes positions from position_ids; we derive them from the mask
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        ref = hf(ids, attention_mask=mask, position_ids=pos).logits
        got = ours(ids, attention_mask=mask)
    real = mask.bool()
    assert (got[real] - ref[real]).abs().max() <= 1e-5


@pytest.mark.parametrize("arch,extra", CASES, ids=[f"{a}-{i}" for i, (a, _) in enumerate(CASES)])
def test_right_padding_takes_the_causal_path_and_matches_transformers(arch, extra, tmp_path):
    # right padding only (training batches): the mask is dropped for SDPA's causal kernel; real positions must not move
    hf = hf_model(arch, tmp_path, **extra)
    ours = Transformer.from_pretrained(tmp_path)
    ids, mask = batch()
    ids, mask = ids[[0, 2]], mask[[0, 2]]
    assert ours._mask(mask, 2, 12, 0, "cpu") is None or extra.get("sliding_window")
    with torch.no_grad():
        ref = hf(ids, attention_mask=mask).logits
        got = ours(ids, attention_mask=mask)
    real = mask.bool()
    assert (got[real] - ref[real]).abs().max() <= 1e-5


def test_left_padding_equals_unpadded(tmp_path):
    hf_model("llama", tmp_path)
    m = Transformer.from_pretrained(tmp_path)
    ids, mask = batch()
    with torch.no_grad():
        alone = m(ids[1:2, 4:])
        padded = m(ids[1:2], attention_mask=mask[1:2])[:, 4:]
    assert (alone - padded).abs().max() <= 1e-5


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_greedy_generation_matches_transformers(arch, tmp_path):
    hf = hf_model(arch, tmp_path)
    ours = Transformer.from_pretrained(tmp_path)
    ids = torch.randint(0, 101, (2, 7), generator=torch.Generator().manual_seed(2))
    ref = hf.generate(ids, max_new_tokens=32, do_sample=False, min_new_tokens=32, eos_token_id=None, pad_token_id=0)
    got = ours.generate(ids, max_new_tokens=32)
    assert torch.equal(got, ref[:, 7:])


def test_generation_cache_equals_full_forward(tmp_path):
    hf_model("mistral", tmp_path, sliding_window=6)
    m = Transformer.from_pretrained(tmp_path)
    ids, mask = batch()
    new = m.generate(ids, attention_mask=mask, max_new_tokens=5)
    full = torch.cat([ids, new], 1)
    fmask = torch.cat([mask, torch.ones_like(new)], 1)
    with torch.no_grad():  # re-run without the cache: each generated token must be the argmax again
        logits = m(full, attention_mask=fmask)
    assert torch.equal(logits[:, 11:-1].argmax(-1), new)


def test_bf16_close_to_fp32(tmp_path):
    hf_model("llama", tmp_path)
    ids, _ = batch()
    with torch.no_grad():
        a = Transformer.from_pretrained(tmp_path)(ids)
        b = Transformer.from_pretrained(tmp_path, dtype=torch.bfloat16)(ids).float()
    assert (a - b).abs().max() < 0.1 * a.abs().max()


@pytest.mark.parametrize("breakage,msg", [
    ("no_config", "no config.json"), ("arch", "unsupported architecture"),
    ("missing", "missing"), ("shape", "has shape"), ("corrupt", "corrupt safetensors"),
])
def test_bad_checkpoints(breakage, msg, tmp_path):
    from safetensors.torch import load_file, save_file
    hf_model("llama", tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    st = tmp_path / "model.safetensors"
    if breakage == "no_config":
        (tmp_path / "config.json").unlink()
    elif breakage == "arch":
        cfg["architectures"] = ["GPT2LMHeadModel"]
        (tmp_path / "config.json").write_text(json.dumps(cfg))
    elif breakage in ("missing", "shape"):
        state = load_file(st)
        k = "model.layers.1.mlp.up_proj.weight"
        if breakage == "missing":
            del state[k]
        else:
            state[k] = state[k][:, :10].contiguous()
        save_file(state, st)
    elif breakage == "corrupt":
        st.write_bytes(st.read_bytes()[:1000])
    with pytest.raises((ValueError, FileNotFoundError), match=msg):
        Transformer.from_pretrained(tmp_path)


def test_real_default_model_matches_transformers(model_dir):
    hf = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ours = Transformer.from_pretrained(model_dir)
    from data import Tokenizer
    tok = Tokenizer(model_dir)
    text = tok.chat([{"role": "user", "content": "What is the capital of France? Answer in one word."}])
    ids = torch.tensor([tok.encode(text)])
    with torch.no_grad():
        ref = hf(ids).logits
        got = ours(ids)
        assert ((got - ref).abs().max() / ref.abs().max()).item() <= 1e-4
        gen_ref = hf.generate(ids, max_new_tokens=32, do_sample=False, min_new_tokens=32, eos_token_id=None,
                              pad_token_id=tok.pad_id)[:, ids.shape[1]:]
    assert torch.equal(ours.generate(ids, max_new_tokens=32), gen_ref)
    assert "Paris" in tok.decode(gen_ref[0].tolist())

"""
Benchmarks (not tests): numbers printed, with ratios against a baseline measured in the same run.

    python bench.py forward   # our forward vs transformers, batch 8 x 256, fp32 and bf16 (same weights)

Uses the prepared default model when present, else random weights of its shapes.
"""
import argparse
import os
import tempfile
import time

import torch

from model import Transformer

SMOLLM2_135M = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 49152, "hidden_size": 576,
                "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
                "head_dim": 64, "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "max_position_embeddings": 8192,
                "tie_word_embeddings": True, "hidden_act": "silu"}


def timeit(fn, warmup=1, reps=3):
    for _ in range(warmup):
        fn()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps


def model_dir(path):
    if os.path.isfile(os.path.join(path, "model.safetensors")):
        return path, "prepared weights"
    from transformers import LlamaConfig, LlamaForCausalLM  # benchmark-only dependency
    tmp = tempfile.mkdtemp()
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M)).save_pretrained(tmp)
    return tmp, "random weights, SmolLM2-135M shapes"


@torch.no_grad()
def bench_forward(path, batch, seq, reps):
    from transformers import AutoModelForCausalLM  # the baseline
    path, what = model_dir(path)
    print(f"forward, batch {batch} x {seq} tokens, {what}, {torch.get_num_threads()} threads")
    ids = torch.randint(0, 49152, (batch, seq), generator=torch.Generator().manual_seed(0))
    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        ours = Transformer.from_pretrained(path, dtype=dt)
        hf = AutoModelForCausalLM.from_pretrained(path, dtype=dt).eval()
        # interleave the two so that machine noise hits both alike
        t_ours, t_hf = [], []
        for _ in range(reps):
            t_ours.append(timeit(lambda: ours(ids), reps=1))
            t_hf.append(timeit(lambda: hf(ids).logits, reps=1))
        a, b = min(t_ours), min(t_hf)
        print(f"  {name}: ours {batch * seq / a:7.0f} tok/s   transformers {batch * seq / b:7.0f} tok/s   "
              f"ratio {b / a:.2f}x", flush=True)
        del ours, hf


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=("forward",))
    p.add_argument("--model", default="assets/models/SmolLM2-135M-Instruct")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args()
    if args.what == "forward":
        bench_forward(args.model, args.batch, args.seq, args.reps)


if __name__ == "__main__":
    main()

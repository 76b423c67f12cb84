"""
Benchmarks (not tests): numbers printed, with ratios against a baseline measured in the same run.

    python bench.py forward   # our forward vs transformers, batch 8 x 256, fp32 and bf16 (same weights)
    python bench.py train     # T2L training step: our batched per-example LoRA vs the reference's
                              # per-token copies of A and B; tokens/s and peak memory, same model and batch
    python bench.py latency   # description -> adapter latency for each hypernetwork size
    python bench.py profile   # where the forward's time goes, per ATen operator, ours vs transformers
    python bench.py generate  # greedy decoding, a batch of 8 with 1/2/4/8 adapters: ours (an adapter per row)
                              # vs transformers + peft (one adapter at a time); new tokens/s

Uses the prepared default model when present, else random weights of its shapes.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from lora import LoRALinear, lora_scale
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
        # interleave the two, alternating which goes first, so that machine noise hits both alike; the
        # ratio is the median of the per-pair ratios, the throughputs are each side's best repetition
        t_ours, t_hf = [], []
        for r in range(reps + 1):
            pair = [(t_ours, lambda: ours(ids)), (t_hf, lambda: hf(ids).logits)]
            for times, fn in (pair if r % 2 == 0 else pair[::-1]):
                times.append(timeit(fn, warmup=0, reps=1))
        t_ours, t_hf = t_ours[1:], t_hf[1:]  # the first pair warms up
        ratios = sorted(b / a for a, b in zip(t_ours, t_hf))
        print(f"  {name}: ours {batch * seq / min(t_ours):7.0f} tok/s   transformers {batch * seq / min(t_hf):7.0f} tok/s   "
              f"ratio {statistics.median(ratios):.2f}x (median of {reps} pairs; range {ratios[0]:.2f}-{ratios[-1]:.2f})",
              flush=True)
        del ours, hf


def per_token_forward(self, x, A=None, B=None, scale=None):
    # the reference's way (T2L_NOTES section 9): copy each example's A and B once per token, then bmm
    y = torch.nn.functional.linear(x, self.weight, self.bias)
    if A is None:
        return y
    b, T, d_in = x.shape
    xd = torch.nn.functional.dropout(x, self.dropout, self.training).reshape(b * T, 1, d_in)
    A_tok = A.to(x.dtype).repeat_interleave(T, 0)  # (b*T, r, d_in): a copy per token
    B_tok = B.to(x.dtype).repeat_interleave(T, 0)  # (b*T, d_out, r)
    h = torch.bmm(torch.bmm(xd, A_tok.transpose(1, 2)), B_tok.transpose(1, 2))  # (b*T, 1, d_out)
    return y + (scale or lora_scale()) * h.view(b, T, -1)


def bench_train_variant(path, variant, size, batch, seq, steps, dtype):
    """One variant in its own process, so peak memory (max RSS on CPU) belongs to it alone."""
    from t2l import HyperConfig, HyperNetwork
    from train import t2l_loss
    if variant == "reference":
        LoRALinear.forward = per_token_forward  # benchmark only: emulate the reference's LoRA application
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = Transformer.from_pretrained(path, device=device, dtype=dtype).train()
    model.requires_grad_(False)
    net = HyperNetwork(HyperConfig(size, model.config.dim, model.config.n_layers, model.lora_shapes())).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-5)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), generator=g).to(device)
    mask = torch.ones_like(ids)
    target = torch.zeros_like(ids, dtype=torch.bool)
    target[:, seq // 2:] = True  # loss on the second half, like a prompt + response
    emb = torch.randn(batch, model.config.dim, generator=g).to(device)

    def step():
        _, loss = t2l_loss(model, net, emb, ids, mask, target, neftune=5.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
    step()
    # memory the step keeps for backward: every tensor autograd saves, counted once per storage, frozen
    # weights excluded (both variants save the same ones). Exact and deterministic, unlike RSS on CPU.
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in weights:
            saved[st.data_ptr()] = st.nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        t2l_loss(model, net, emb, ids, mask, target, neftune=5.0)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t = timeit(step, warmup=0, reps=steps)
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else 0
    print(f"{batch * seq / t:.1f} {sum(saved.values())} {peak}")


def bench_train(path, size, batch, seq, steps):
    path, what = model_dir(path)
    print(f"T2L training step ({size}), batch {batch} x {seq} tokens, bf16 base model, {what}, "
          f"{torch.get_num_threads()} threads")
    res = {}
    for variant in ("ours", "reference"):
        out = subprocess.run([sys.executable, __file__, "_train_variant", "--model", path, "--variant", variant,
                              "--size", size, "--batch", str(batch), "--seq", str(seq), "--reps", str(steps)],
                             capture_output=True, text=True, check=True).stdout.split()
        res[variant] = float(out[0]), int(out[1]), int(out[2])
        cuda = f"   CUDA peak {res[variant][2] / 2**20:7.0f} MiB" if torch.cuda.is_available() else ""
        print(f"  {variant:9s}: {res[variant][0]:7.0f} tok/s   saved for backward {res[variant][1] / 2**20:7.0f} MiB{cuda}",
              flush=True)
    (a, ma, _), (b, mb, _) = res["ours"], res["reference"]
    print(f"  ours vs reference: {a / b:.2f}x the throughput, {ma / mb:.2f}x the activation memory")


@torch.no_grad()
def bench_latency(path, reps):
    from data import Tokenizer
    from t2l import HyperConfig, HyperNetwork, embed_descriptions
    path, what = model_dir(path)
    model = Transformer.from_pretrained(path, dtype=torch.bfloat16)  # as train.py, eval.py and t2l.py embed
    tok = Tokenizer(path)
    desc = "Answer grade-school science questions by choosing the letter of the correct option."
    print(f"description -> adapter latency, {what}, bf16 base model, fp32 hypernetwork, "
          f"{torch.get_num_threads()} threads, median of {reps}")
    for size in ("large", "medium", "small"):
        net = HyperNetwork(HyperConfig(size, model.config.dim, model.config.n_layers, model.lora_shapes())).eval()
        t_emb, t_net = [], []
        for _ in range(reps + 1):
            t0 = time.perf_counter()
            emb = embed_descriptions(model, tok, [desc])
            t1 = time.perf_counter()
            net(emb)
            t2 = time.perf_counter()
            t_emb.append(t1 - t0)
            t_net.append(t2 - t1)
        med = lambda xs: sorted(xs[1:])[len(xs[1:]) // 2] * 1000
        n = sum(p.numel() for p in net.parameters())
        print(f"  {size:6s} ({n / 1e6:5.2f}M params): embedding {med(t_emb):6.1f} ms + hypernetwork {med(t_net):6.1f} ms "
              f"= {med(t_emb) + med(t_net):6.1f} ms")


@torch.no_grad()
def bench_profile(path, batch, seq, reps):
    from collections import Counter
    from torch.profiler import profile
    from transformers import AutoModelForCausalLM
    path, what = model_dir(path)
    print(f"operator time of {reps} forwards, batch {batch} x {seq}, bf16, {what}, {torch.get_num_threads()} threads")
    ids = torch.randint(0, 49152, (batch, seq), generator=torch.Generator().manual_seed(0))
    models = {"ours": Transformer.from_pretrained(path, dtype=torch.bfloat16),
              "transformers": AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()}
    ms = {name: Counter() for name in models}
    for r in range(reps + 1):  # interleaved; the first round warms up
        for name, m in models.items():
            with profile() as prof:
                m(ids)
            if r:
                for e in prof.key_averages():
                    ms[name][e.key] += e.self_cpu_time_total / 1000
    ours, hf = ms["ours"], ms["transformers"]
    for op, t in ours.most_common(8):
        print(f"  {op[:48]:48s} ours {t:8.1f} ms   transformers {hf[op]:8.1f} ms")
    print(f"  {'all operators':48s} ours {sum(ours.values()):8.1f} ms   transformers {sum(hf.values()):8.1f} ms")


@torch.no_grad()
def bench_generate(path, batch, new_tokens, reps):
    """Greedy decoding throughput: our batched decoder with an adapter per row vs transformers + peft,
    which applies one adapter at a time (a batch with n adapters = n generate calls). Same weights, prompts,
    adapters and number of new tokens (both forced to exactly new_tokens)."""
    from peft import PeftModel  # the baseline
    from transformers import AutoModelForCausalLM
    from data import Tokenizer
    from eval import generate_rows, pad_left
    from lora import save_adapter
    path, what = model_dir(path)
    tok = Tokenizer(path)
    words = "Classify the sentiment of this short movie review as positive or negative and explain nothing".split()
    prompts = [tok.encode(tok.chat([{"role": "user", "content": " ".join(words[:4 + 2 * i])}])) for i in range(batch)]
    print(f"generation, batch {batch}, {new_tokens} new tokens per row, prompts of {min(map(len, prompts))}-"
          f"{max(map(len, prompts))} tokens, bf16, {what}, {torch.get_num_threads()} threads, median of {reps}")
    ours = Transformer.from_pretrained(path, dtype=torch.bfloat16)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
    g = torch.Generator().manual_seed(0)
    L, shapes = ours.config.n_layers, ours.lora_shapes()
    bank = {"scale": lora_scale()}  # batch-many random adapters, in our per-row format and as PEFT folders
    for name, (d_in, d_out) in shapes.items():
        bank[name] = (torch.randn(batch, L, 8, d_in, generator=g) * 0.02, torch.randn(batch, L, d_out, 8, generator=g) * 0.02)
    tmp = tempfile.mkdtemp()
    for k in range(batch):
        save_adapter(os.path.join(tmp, str(k)), {n: (v[0][k], v[1][k]) for n, v in bank.items() if n != "scale"})
    peft = PeftModel.from_pretrained(hf, os.path.join(tmp, "0"), adapter_name="0")
    for k in range(1, batch):
        peft.load_adapter(os.path.join(tmp, str(k)), adapter_name=str(k))

    def run_ours(rows):
        generate_rows(ours, prompts, rows, bank, new_tokens, None, tok.pad_id, batch, "cpu")

    def run_peft(rows):
        for k in sorted(set(rows)):  # one adapter at a time, its rows as one left-padded batch
            ids, mask = pad_left([p for p, r in zip(prompts, rows) if r == k], tok.pad_id, "cpu")
            peft.set_adapter(str(k))
            peft.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                          do_sample=False, pad_token_id=tok.pad_id)
    for n in (1, 2, 4, 8):
        if n > batch:
            break
        rows = [i % n for i in range(batch)]
        t_ours, t_peft = [], []
        for r in range(reps + 1):  # interleaved, alternating which goes first; the first pair warms up
            pair = [(t_ours, lambda: run_ours(rows)), (t_peft, lambda: run_peft(rows))]
            for times, fn in (pair if r % 2 == 0 else pair[::-1]):
                times.append(timeit(fn, warmup=0, reps=1))
        t_ours, t_peft = t_ours[1:], t_peft[1:]
        ratios = sorted(b / a for a, b in zip(t_ours, t_peft))
        print(f"  {n} adapter(s) in the batch: ours {batch * new_tokens / statistics.median(t_ours):6.1f} new tok/s   "
              f"transformers+peft {batch * new_tokens / statistics.median(t_peft):6.1f} new tok/s   "
              f"ratio {statistics.median(ratios):.2f}x (range {ratios[0]:.2f}-{ratios[-1]:.2f})", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=("forward", "train", "latency", "profile", "generate", "_train_variant"))
    p.add_argument("--size", default="large", choices=("large", "medium", "small"))
    p.add_argument("--variant", default="ours")
    p.add_argument("--model", default="assets/models/SmolLM2-135M-Instruct")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--new-tokens", type=int, default=32, help="generate: new tokens per row")
    args = p.parse_args()
    if args.what == "forward":
        bench_forward(args.model, args.batch, args.seq, args.reps)
    elif args.what == "train":
        bench_train(args.model, args.size, args.batch, args.seq, args.reps)
    elif args.what == "latency":
        bench_latency(args.model, args.reps)
    elif args.what == "generate":
        bench_generate(args.model, args.batch, args.new_tokens, args.reps)
    elif args.what == "profile":
        bench_profile(args.model, args.batch, args.seq, args.reps)
    else:
        bench_train_variant(args.model, args.variant, args.size, args.batch, args.seq, args.reps, torch.bfloat16)


if __name__ == "__main__":
    main()

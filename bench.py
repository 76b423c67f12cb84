"""
Benchmarks (not tests): numbers printed, with ratios against a baseline measured in the same run.

    python bench.py forward   # our forward vs transformers, batch 8 x 256, fp32 and bf16 (same weights)
    python bench.py train     # training steps on batches sampled as train.py samples them (T2L SFT, plain LoRA):
                              # today's padded step vs length-grouped micro-batches; real/computed tokens/s, MFU
    python bench.py profile-step  # where a T2L training step's time goes, per ATen operator
    python bench.py lora-copies   # T2L step: our batched per-example LoRA vs the reference's per-token copies of
                              # A and B; tokens/s and activation memory, same model and batch
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
from model import Transformer, compile_model

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
    from recipes import t2l_loss
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


def bench_lora_copies(path, size, batch, seq, steps):
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


def gemm_peak(reps=20):
    # what a bf16 matmul of the model's own MLP shape reaches here: the ceiling for model FLOP utilisation
    a, b = torch.randn(2048, 576, dtype=torch.bfloat16), torch.randn(576, 1536, dtype=torch.bfloat16)
    if torch.cuda.is_available():
        a, b = torch.randn(8192, 4096, dtype=torch.bfloat16, device="cuda"), torch.randn(4096, 4096, dtype=torch.bfloat16, device="cuda")
    sync = torch.cuda.synchronize if a.is_cuda else (lambda: None)
    best = min(timeit(lambda: (a @ b, sync()), warmup=2, reps=reps) for _ in range(3))
    return 2 * a.shape[0] * a.shape[1] * b.shape[1] / best


def model_flops(cfg, examples):
    """FLOPs a step must do on the real tokens: the frozen linear layers forward and input-gradient (2 x 2 per weight
    per token; no weight gradients), causal attention (forward QK^T and AV on the lower triangle, backward twice that),
    the output layer on response tokens only (forward and input gradient). LoRA's rank-8 products are left out (<1%)."""
    c = cfg
    lin = c.dim * c.head_dim * (2 * c.n_heads + 2 * c.n_kv_heads) + 3 * c.dim * c.hidden_dim  # per layer
    total = 0
    for ids, n_prompt in examples:
        T, resp = len(ids), len(ids) - n_prompt
        total += 4 * lin * c.n_layers * T + 3 * 2 * c.n_heads * c.head_dim * T * T * c.n_layers + 4 * c.vocab_size * c.dim * resp
    return total


def sampled_setup(path, size, n_tasks, k, max_len):
    """The default model and the SNI training tasks present, loaded and batched exactly as train.py does."""
    from data import Tokenizer, load_splits
    from t2l import HyperConfig, HyperNetwork
    from data import load_tasks
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = Transformer.from_pretrained(path, device=device, dtype=torch.bfloat16).train()
    model.requires_grad_(False)
    tok = Tokenizer(path)
    tasks = load_tasks(tok, "assets/data", load_splits("assets/data")["train"], max_len, 1)
    if not tasks:
        raise SystemExit("error: no SNI training tasks in assets/data (run: python prepare.py)")
    torch.manual_seed(0)
    net = HyperNetwork(HyperConfig(size, model.config.dim, model.config.n_layers, model.lora_shapes())).to(device)
    return model, tok, tasks, net, device


def bench_train(path, size, steps, n_tasks, k, max_len, budget, compile_):
    """Training steps on batches sampled as train.py samples them (seeds 0, 1, ...): today's step (one right-padded
    batch, padding computed, SDPA given the padding mask) vs the length-grouped micro-batch step, T2L SFT and a plain
    static LoRA, interleaved per batch so machine noise hits all alike."""
    from contextlib import nullcontext
    from lora import set_adapters
    from recipes import accumulate, make_batch, response_ce, sample_batch, t2l_loss, t2l_step
    model, tok, tasks, net, device = sampled_setup(path, size, n_tasks, k, max_len)
    names = sorted(tasks)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else nullcontext()
    peak = gemm_peak()
    print(f"training steps on sampled batches ({len(names)} SNI tasks, {n_tasks} x {k} per step, max {max_len} tokens), "
          f"{size} hypernetwork, bf16 base, {device}, {torch.get_num_threads()} threads; measured bf16 GEMM peak "
          f"{peak / 1e9:.0f} GFLOP/s", flush=True)
    emb = torch.randn(n_tasks * k, model.config.dim, device=device)
    eager = model.hidden
    if compile_:  # what train.py --compile does: the whole forward, dynamic shapes; timed as one more variant
        why = compile_model(model, device)
        if why:
            raise SystemExit(f"error: --compile: {why}")
    compiled, model.hidden = model.hidden, eager
    A = {m: torch.empty(model.config.n_layers, 8, d_in) for m, (d_in, d_out) in model.lora_shapes().items()}
    static = {m: (torch.nn.init.normal_(a, std=0.02), torch.zeros(model.config.n_layers, model.lora_shapes()[m][1], 8))
              for m, a in A.items()}

    def padded_mask(mask):  # today's model passed the padding mask to SDPA whenever a row was padded
        return mask if not bool(mask.all()) else None

    def old_t2l(exs):
        ids, mask, target = make_batch(exs, tok.pad_id, device)
        with ctx:
            _, loss = t2l_loss(model, net, emb[:len(exs)], ids, mask, target, neftune=5.0)
        loss.backward()
        return ids.numel()

    def new_t2l(exs):
        return t2l_step(model, net, emb[:len(exs)], exs, tok.pad_id, device, budget, ctx, neftune=5.0)[2]

    def old_lora(exs):
        ids, mask, target = make_batch(exs, tok.pad_id, device)
        with ctx:
            response_ce(model, ids, mask, target, None, 0.1, 5.0).mean().backward()
        return ids.numel()

    def new_lora(exs):
        return accumulate(model, exs, tok.pad_id, device, budget, ctx, None, 0.1, 5.0)[1]

    import model as model_module
    causal_mask = model_module.Transformer._mask

    def today(self, attention_mask, B, T, past, dev):  # the mask rule before right padding took SDPA's causal path
        if attention_mask is None or (past == 0 and bool(attention_mask.all())):
            return None
        return _explicit_mask(attention_mask, T, dev)

    # variant -> (baseline, candidate), each (label, step function, mask rule, forward)
    variants = {"T2L SFT": (("today", old_t2l, today, eager), ("new", new_t2l, causal_mask, eager)),
                "plain LoRA": (("today", old_lora, today, eager), ("new", new_lora, causal_mask, eager))}
    if compile_:
        variants["T2L SFT, --compile"] = (("eager", new_t2l, causal_mask, eager), ("compiled", new_t2l, causal_mask, compiled))
    res = {v: ([], []) for v in variants}
    for s in range(steps + 1):  # step 0 warms up
        exs = [ex for ex, _ in sample_batch(tasks, names, n_tasks, k, s)]
        real = sum(len(ids) for ids, _ in exs)
        flops = model_flops(model.config, exs)
        for v, pair in variants.items():
            set_adapters(model, static if v == "plain LoRA" else None)
            for layer in model.model.layers:
                for m in (layer.self_attn.q_proj, layer.self_attn.v_proj):
                    if m.lora_A is not None:
                        m.lora_A.requires_grad_(True)
                        m.lora_B.requires_grad_(True)
            for i in ((0, 1) if s % 2 == 0 else (1, 0)):
                _, fn, model_module.Transformer._mask, model.hidden = pair[i]
                net.zero_grad(set_to_none=True)
                sync()
                t = time.perf_counter()
                computed = fn(exs)
                sync()
                if s:
                    res[v][i].append((time.perf_counter() - t, real, computed, flops))
        model_module.Transformer._mask, model.hidden = causal_mask, eager
    set_adapters(model, None)
    for v, pair in variants.items():
        rate = []
        for (label, *_), runs in zip(pair, res[v]):
            t, real, computed, flops = (sum(r[j] for r in runs) for j in range(4))
            rate.append(real / t)
            print(f"  {v:10s} {label:8s}: {real / t:6.0f} real tok/s  {computed / t:6.0f} computed "
                  f"tok/s  padding {1 - real / computed:5.1%}  MFU {flops / t / peak:5.1%} of the GEMM peak", flush=True)
        print(f"  {v:10s} {pair[1][0]} vs {pair[0][0]}: {rate[1] / rate[0]:.2f}x the real tokens/s ({steps} batches)",
              flush=True)


def bench_profile_step(path, size, reps, n_tasks, k, max_len, budget):
    """Where a training step's time goes (forward and backward), per ATen operator, on sampled batches."""
    from collections import Counter
    from contextlib import nullcontext
    from torch.profiler import profile
    from recipes import sample_batch, t2l_step
    model, tok, tasks, net, device = sampled_setup(path, size, n_tasks, k, max_len)
    names, ms = sorted(tasks), Counter()
    emb = torch.randn(n_tasks * k, model.config.dim, device=device)
    for s in range(reps + 1):  # the first step warms up
        exs = [ex for ex, _ in sample_batch(tasks, names, n_tasks, k, s)]
        with profile() as prof:
            t2l_step(model, net, emb[:len(exs)], exs, tok.pad_id, device, budget, nullcontext(), neftune=5.0)
        if s:
            for e in prof.key_averages():
                ms[e.key] += e.self_cpu_time_total / 1000
    total = sum(ms.values())
    print(f"operator time of {reps} T2L SFT steps ({size}, sampled batches, micro-batches of <= {budget} tokens), "
          f"{torch.get_num_threads()} threads: {total:.0f} ms")
    for op, t in ms.most_common(12):
        print(f"  {op[:56]:56s} {t:8.1f} ms  {t / total:5.1%}")
    core = sum(t for op, t in ms.items() if op in ("aten::mm", "aten::bmm", "aten::addmm") or "attention" in op)
    print(f"  outside matmuls and attention: {1 - core / total:.1%}")


def _explicit_mask(attention_mask, T, device):
    # today's mask for a padded batch: causal and padding, as a boolean (B, 1, T, T) tensor given to SDPA
    qi, ki = torch.arange(T, device=device)[:, None], torch.arange(T, device=device)[None, :]
    allowed = (ki <= qi)[None, None] & attention_mask.bool()[:, None, None, :]
    return allowed | (ki == qi)[None, None]


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
    from generate import generate_rows, pad_left
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
    p.add_argument("what", choices=("forward", "train", "profile-step", "lora-copies", "latency", "profile", "generate",
                                    "_train_variant"))
    p.add_argument("--size", default="large", choices=("large", "medium", "small"))
    p.add_argument("--variant", default="ours")
    p.add_argument("--model", default="assets/models/SmolLM2-135M-Instruct")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--tasks-per-batch", type=int, default=8, help="train, profile-step: as train.py")
    p.add_argument("--max-len", type=int, default=256, help="train, profile-step: as train.py")
    p.add_argument("--micro-tokens", type=int, default=1024, help="train, profile-step: as train.py")
    p.add_argument("--compile", action="store_true", help="train: also time the new SFT step with the base model's forward compiled (train.py --compile)")
    p.add_argument("--new-tokens", type=int, default=32, help="generate: new tokens per row")
    args = p.parse_args()
    if args.what == "forward":
        bench_forward(args.model, args.batch, args.seq, args.reps)
    elif args.what == "train":
        bench_train(args.model, args.size, args.reps, args.tasks_per_batch, 1, args.max_len, args.micro_tokens, args.compile)
    elif args.what == "profile-step":
        bench_profile_step(args.model, args.size, args.reps, args.tasks_per_batch, 1, args.max_len, args.micro_tokens)
    elif args.what == "lora-copies":
        bench_lora_copies(args.model, args.size, args.batch, args.seq, args.reps)
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

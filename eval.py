"""
Score the base model (optionally with a LoRA adapter) on the seven multiple-choice benchmarks of the
paper (T2L_NOTES section 7). Two deterministic scorings:

  mc     the paper's prompt in the model's chat template; the prediction is the argmax of the
         next-token logits restricted to the answer tokens ("A".."E", "0".."3", "true"/"false" ...).
  cloze  lm-evaluation-harness style: the log-likelihood of each choice as a continuation of a plain
         prompt (no chat template, no BOS); acc, and acc_norm = log-likelihood / length of the choice
         in characters.

Speed: questions are sorted by length and batched (little padding); only the answer positions go
through the 49k-wide output layer; the prompt prefix every question shares (system prompt and
instruction) is run once and kept in a KV cache; a cloze context is run once for all its choices.

    python eval.py --task arc_easy                   # mc scoring, bf16, full test split
    python eval.py --task all --scoring cloze --limit 500 --out results.json
"""
import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

from data import TASKS, Parser, Tokenizer, cloze_item, load_benchmark, load_eval_descriptions, mc_item
from lora import load_adapter, set_adapters
from model import KVCache, Transformer
from t2l import embed_descriptions, load_checkpoint

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def common_prefix(seqs):
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for s in seqs[1:]:
        while n and s[:n] != first[:n]:
            n -= 1
    return n


def pad_right(seqs, device):
    T = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), T, dtype=torch.long)
    mask = torch.zeros(len(seqs), T, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
    return ids.to(device), mask.to(device)


def last_hidden(model, seqs, device, prefix=None):
    """Hidden state at each sequence's last real token (B, dim). `prefix` = (cache, n): a KV cache holding
    the first n tokens every sequence shares, which are then not run again."""
    if prefix is None:
        ids, mask = pad_right(seqs, device)
        h = model.hidden(ids, mask)
    else:
        cache, n = prefix
        ids, mask = pad_right([s[n:] for s in seqs], device)
        cache = cache.expand(torch.tensor([len(seqs)], device=device), ids.shape[1])
        h = model.hidden(ids, torch.cat([torch.ones(len(seqs), n, dtype=torch.long, device=device), mask], 1), cache=cache)
    last = mask.sum(1) - 1  # (B,) right padding: index of the last real token
    return h[torch.arange(len(seqs), device=device), last]  # (B, dim)


def score_mc(model, tok, task, docs, batch_size, device, progress, preamble=None):
    items = [mc_item(task, d) for d in docs]
    if preamble:  # the "base model + task description" baseline: the description opens the user turn
        items = [(f"{preamble}\n\n{user}", labels, gold) for user, labels, gold in items]
    prompts = [tok.encode(tok.chat([{"role": "user", "content": user}])) for user, _, _ in items]
    label_ids = {}
    for _, labels, _ in items:
        for lab in labels:
            if lab not in label_ids:
                ids = tok.encode(lab)
                assert len(ids) == 1, f"answer '{lab}' is {len(ids)} tokens; mc scoring needs single tokens"
                label_ids[lab] = ids[0]
    # the shared prefix (system prompt, instruction) is run once; every batch starts from its cache
    n = common_prefix(prompts) if len(prompts) > 1 else 0
    n = min(n, min(len(p) for p in prompts) - 1)
    prefix = None
    if n > 0:
        cache = KVCache(model.config, 1, n, device, next(model.parameters()).dtype)
        model.hidden(torch.tensor([prompts[0][:n]], device=device), cache=cache)
        prefix = (cache, n)
    W = model.lm_head.weight
    correct = [0] * len(items)
    order = sorted(range(len(items)), key=lambda i: len(prompts[i]))
    for b in range(0, len(order), batch_size):
        idx = order[b:b + batch_size]
        h = last_hidden(model, [prompts[i] for i in idx], device, prefix)  # (B, dim)
        for row, i in enumerate(idx):
            _, labels, gold = items[i]
            rows = torch.tensor([label_ids[lab] for lab in labels], device=device)
            logits = W[rows] @ h[row]  # only the answer tokens' rows of the output layer
            correct[i] = int(logits.argmax().item() == gold)
        progress(len(idx))
    return {"acc": correct}


def lm_eval_encode(tok, context, continuation):
    # lm-evaluation-harness: trailing spaces of the context move to the continuation, and the
    # continuation's tokens are those of the whole string after the context's own tokens
    n = len(context) - len(context.rstrip(" "))
    if n:
        context, continuation = context[:-n], context[-n:] + continuation
    ctx = tok.encode(context)
    return ctx, tok.encode(context + continuation)[len(ctx):]


def cloze_logliks(model, tok, task, docs, batch_size, device, progress):
    """Log-likelihood of every choice of every question: [[ll per choice] per doc]."""
    # a group = one context and the continuations scored after it (ARC: one context, n choices;
    # Winogrande: one context per option, the same continuation)
    groups, owners = [], []  # owners[g] = (doc index, choice indices)
    items = [cloze_item(task, d) for d in docs]
    for di, (contexts, conts, _gold, _lens) in enumerate(items):
        by_ctx = {}
        for ci, c in enumerate(contexts):
            by_ctx.setdefault(c, []).append(ci)
        for c, cis in by_ctx.items():
            encs = [lm_eval_encode(tok, c, conts[ci]) for ci in cis]
            groups.append((encs[0][0], [e[1] for e in encs]))
            owners.append((di, cis))
    ll = [[0.0] * len(it[1]) for it in items]
    W = model.lm_head.weight
    order = sorted(range(len(groups)), key=lambda g: len(groups[g][0]) + max(map(len, groups[g][1])))
    done_docs = 0
    for b in range(0, len(order), batch_size):
        idx = order[b:b + batch_size]
        ctx_ids, ctx_mask = pad_right([groups[g][0] for g in idx], device)
        cache = KVCache(model.config, len(idx), ctx_ids.shape[1], device, W.dtype)
        h_ctx = model.hidden(ctx_ids, ctx_mask, cache=cache)
        h_last = h_ctx[torch.arange(len(idx), device=device), ctx_mask.sum(1) - 1]  # (G, dim)
        reps = torch.tensor([len(groups[g][1]) for g in idx], device=device)
        conts = [c for g in idx for c in groups[g][1]]
        cont_ids, cont_mask = pad_right(conts, device)  # (N, Tk)
        # the continuation follows the context's last real token; the pads between are masked out
        cache = cache.expand(reps, cont_ids.shape[1])
        full_mask = torch.cat([ctx_mask.repeat_interleave(reps, 0), cont_mask], 1)
        h = model.hidden(cont_ids, full_mask, cache=cache)  # (N, Tk, dim)
        h = torch.cat([h_last.repeat_interleave(reps, 0)[:, None], h[:, :-1]], 1)  # position predicting each token
        logp = F.log_softmax(F.linear(h, W).float(), -1).gather(-1, cont_ids[..., None])[..., 0]  # (N, Tk)
        tok_ll = (logp * cont_mask).sum(1).tolist()
        k = 0
        for g in idx:
            di, cis = owners[g]
            for ci in cis:
                ll[di][ci] = tok_ll[k]
                k += 1
        progress(sum(len(owners[g][1]) / len(ll[owners[g][0]]) for g in idx))  # in questions
    return ll


def score_cloze(model, tok, task, docs, batch_size, device, progress, preamble=None):
    if preamble:
        raise ValueError("a description in the prompt (--prepend-description) goes with --scoring mc only")
    items = [cloze_item(task, d) for d in docs]
    ll = cloze_logliks(model, tok, task, docs, batch_size, device, progress)
    acc, acc_norm = [], []
    for (_, _, gold, lens), scores in zip(items, ll):
        acc.append(int(max(range(len(scores)), key=lambda i: scores[i]) == gold))
        if lens is not None:
            acc_norm.append(int(max(range(len(scores)), key=lambda i: scores[i] / lens[i]) == gold))
    return {"acc": acc, "acc_norm": acc_norm or None}


def summarize(xs):
    n = len(xs)
    p = sum(xs) / n
    return p, math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else 0.0  # sample stderr, as lm-eval reports


class Progress:
    def __init__(self, task, total, every=10.0):
        self.task, self.total, self.done, self.t0, self.last, self.every = task, total, 0, time.time(), time.time(), every

    def __call__(self, n):
        self.done += n
        now = time.time()
        if now - self.last > self.every and self.done < self.total:
            rate = self.done / (now - self.t0)
            print(f"  {self.task}: {self.done:.0f}/{self.total} questions, {rate:.1f} q/s, "
                  f"eta {(self.total - self.done) / max(rate, 1e-9):.0f}s", file=sys.stderr, flush=True)
            self.last = now


@torch.no_grad()
def evaluate(model, tok, task, docs, scoring="mc", batch_size=16, device="cpu", preamble=None):
    progress = Progress(task, len(docs))
    t0 = time.time()
    fn = score_mc if scoring == "mc" else score_cloze
    scores = fn(model, tok, task, docs, batch_size, device, progress, preamble)
    wall = time.time() - t0
    acc, se = summarize(scores["acc"])
    res = {"task": task, "scoring": scoring, "n": len(docs), "accuracy": acc, "stderr": se,
           "wall_s": round(wall, 2), "questions_per_s": round(len(docs) / wall, 2)}
    if scores.get("acc_norm"):
        res["acc_norm"], res["acc_norm_stderr"] = summarize(scores["acc_norm"])
    return res


def report(res):
    line = f"{res['task']:14s} {res['scoring']:5s} acc {100 * res['accuracy']:.2f} +- {100 * res['stderr']:.2f}"
    if "acc_norm" in res:
        line += f"  acc_norm {100 * res['acc_norm']:.2f} +- {100 * res['acc_norm_stderr']:.2f}"
    if res.get("description"):
        line += f"  [{res['adapter']}: {res['description'][:50]!r}]"
    print(f"{line}  n={res['n']}  {res['wall_s']:.1f}s  {res['questions_per_s']:.1f} q/s", flush=True)


def limit_arg(s):
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--limit must be a whole number, got '{s}'") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"--limit must be positive, got {v}")
    return v


def main(argv=None):
    p = Parser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True, help=f"a task, a comma list, or 'all' ({', '.join(TASKS)})")
    p.add_argument("--scoring", choices=("mc", "cloze"), default="mc")
    p.add_argument("--limit", type=limit_arg, default=None, help="first N questions of each split")
    p.add_argument("--batch-size", type=int, default=16, help="questions per forward pass")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="bf16")
    p.add_argument("--model", default="assets/models/SmolLM2-135M-Instruct", help="HF-layout model folder")
    p.add_argument("--data", default="assets/data", help="prepared data folder")
    p.add_argument("--lora", default=None, help="PEFT-format adapter folder to apply")
    p.add_argument("--t2l", default=None, help="T2L run folder: score adapters generated from descriptions")
    p.add_argument("--description", default=None, help="with --t2l: this description instead of the task's 3 held-out ones")
    p.add_argument("--controls", action="store_true", help="with --t2l: also adapters from the nonsense descriptions")
    p.add_argument("--prepend-description", action="store_true",
                   help="baseline: no adapter, each held-out description opens the prompt (mc)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    tasks = list(TASKS) if args.task == "all" else [t.strip() for t in args.task.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        p.error(f"unknown task '{unknown[0]}' (choose from {', '.join(TASKS)} or 'all')")
    if args.out:  # check before the run, not after it: a long evaluation must not end in "cannot write"
        out_dir = os.path.dirname(os.path.abspath(args.out))
        try:
            os.makedirs(out_dir, exist_ok=True)
        except OSError as e:
            p.error(f"cannot create the folder of --out '{args.out}': {e.strerror}")
        if not os.access(out_dir, os.W_OK) or os.path.isdir(args.out):
            p.error(f"cannot write --out '{args.out}'")
    try:
        torch.manual_seed(0)
        model = Transformer.from_pretrained(args.model, device=args.device, dtype=DTYPES[args.dtype])
        tok = Tokenizer(args.model)
        if args.lora:
            load_adapter(model, args.lora)
        net = None
        if args.t2l:
            net, hcfg, meta = load_checkpoint(args.t2l, model=model, device=args.device)
        settings = {k: getattr(args, k) for k in ("scoring", "limit", "batch_size", "device", "dtype", "model", "lora", "t2l")}
        results = []
        for task in tasks:
            docs = load_benchmark(task, args.data)
            if args.limit and args.limit > len(docs):
                print(f"{task}: --limit {args.limit} is beyond the split ({len(docs)}); using all of it", file=sys.stderr)
            docs = docs[:args.limit] if args.limit else docs
            runs = [("lora" if args.lora else "base", None, None)]  # (adapter source, description, preamble)
            if net is not None or args.prepend_description:
                ev = load_eval_descriptions(args.data)
                descs = [args.description] if args.description else ev["eval_descriptions"][task]
                kind = "t2l" if net is not None else "base+description"
                runs = [(kind, d, None if net is not None else d) for d in descs]
                if args.controls and net is not None:
                    runs += [("t2l-nonsense", d, None) for d in ev["nonsense_descriptions"]]
            for source, desc, preamble in runs:
                if source.startswith("t2l"):
                    with torch.no_grad():
                        emb = embed_descriptions(model, tok, [desc]).to(args.device)
                        lora = net(emb)  # {module: (A (1, L, r, d_in), B (1, L, d_out, r))}
                    set_adapters(model, {k: (A[0], B[0]) for k, (A, B) in lora.items()}, hcfg.r,
                                 meta.get("lora_alpha", 16), meta.get("rslora", True))
                res = evaluate(model, tok, task, docs, args.scoring, args.batch_size, args.device, preamble)
                if source.startswith("t2l"):
                    set_adapters(model, None)
                res = {**res, "adapter": source, "description": desc, **settings}
                report(res)
                results.append(res)
            scored = [r for r in results if r["task"] == task and r["adapter"] in ("t2l", "base+description")]
            if len(scored) > 1:
                mean = sum(r["accuracy"] for r in scored) / len(scored)
                print(f"{task:14s} {scored[0]['adapter']} mean over {len(scored)} descriptions: {100 * mean:.2f}", flush=True)
                results.append({"task": task, "adapter": scored[0]["adapter"] + "-mean", "n": scored[0]["n"],
                                "accuracy": mean, "stderr": None, "descriptions": len(scored), **settings})
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    if args.out:
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"results": results}, f, indent=2)
        os.replace(tmp, args.out)
    return results


if __name__ == "__main__":
    main()

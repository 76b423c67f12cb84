"""
Score the base model, a LoRA adapter, or Text-to-LoRA adapters on the paper's evaluation (T2L_NOTES section 7).

Multiple-choice benchmarks (the seven of the paper), two deterministic scorings:
  cloze  (default) lm-evaluation-harness style: the log-likelihood of each choice as a continuation of
         a plain prompt (no chat template, no BOS); acc, and acc_norm = log-likelihood / length of the
         choice in characters. Needs no format compliance, so a small model's knowledge shows.
  mc     the paper's prompt in the model's chat template; the prediction is the argmax of the
         next-token logits restricted to the answer tokens ("A".."E", "0".."3", "true"/"false" ...).
Every accuracy is printed beside the chance level (1 / number of choices, averaged over the items) and,
for two-choice tasks, the majority-class rate.

Generation-scored tasks, greedy decoding with the KV cache until the end of the turn or --max-new-tokens:
  sni:NAME, sni-heldout, --sni-file PATH   SNI tasks, prompted exactly as in training; ROUGE-L (SNI's
         metric, `rouge-score` conventions) and exact match, best over the reference outputs (metrics.py)
  gsm8k  the paper's prompt, the assistant turn prefilled with "Let's think step by step."; accuracy of the
         last number in the generation against the number after "####"
A batch of generations mixes rows with different adapters (every row carries its own A and B), so all
descriptions of a task (and the controls) decode together (generate.py).

--table runs every column of the paper's comparison (base, + description, multi-task LoRA, T2L, T2L from
nonsense and from another task's descriptions) on the SNI held-out tasks, the benchmarks and GSM8K.
--spread scores nothing: it measures how far apart the adapters a T2L run writes are (||B A|| distances
within a task's held-out descriptions, between tasks, and to nonsense descriptions): whether the
description decides the adapter at all.

Speed: questions are sorted by length and batched (little padding); only the answer positions go
through the 49k-wide output layer; the prompt prefix every question shares (system prompt and
instruction) is run once and kept in a KV cache; a cloze context is run once for all its choices.

    python eval.py --task arc_easy                   # cloze scoring, bf16, full test split
    python eval.py --task all --scoring mc --limit 500 --out results.json
    python eval.py --task sni-heldout --limit 50 --out out/sni.json
    python eval.py --table --t2l runs/t2l-large --mt-lora runs/mt-lora --limit 50 --out out/table.json
    python eval.py --spread --t2l runs/t2l-small --out out/spread.json
"""
import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

from data import (GSM8K_PREFILL, TASKS, Parser, Tokenizer, cloze_item, gsm8k_user, lm_eval_encode, load_benchmark,
                  load_descriptions, load_eval_descriptions, load_gsm8k, load_sni_eval, load_splits, mc_item, sni_prompt)
from compare import adapter_spread, make_table, markdown
from lora import load_adapter, lora_scale, set_adapters
from generate import MAX_NEW_TOKENS, evaluate_generation
from metrics import gsm8k_gold, summarize
from model import KVCache, Transformer, compile_model
from t2l import embed_descriptions, load_checkpoint

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
BENCHMARKS = TASKS + ("gsm8k",)  # the "another task's description" control cycles within a group


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


def cloze_items(task, docs, preamble=None):
    items = [cloze_item(task, d) for d in docs]
    if preamble:  # "base model + task description" in cloze: the description opens every context
        items = [([f"{preamble}\n\n{c}" for c in contexts], conts, gold, lens) for contexts, conts, gold, lens in items]
    return items


def cloze_logliks(model, tok, task, docs, batch_size, device, progress, preamble=None):
    """Log-likelihood of every choice of every question: [[ll per choice] per doc]."""
    # a group = one context and the continuations scored after it (ARC: one context, n choices;
    # Winogrande: one context per option, the same continuation)
    groups, owners = [], []  # owners[g] = (doc index, choice indices)
    items = cloze_items(task, docs, preamble)
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
    items = cloze_items(task, docs, preamble)
    ll = cloze_logliks(model, tok, task, docs, batch_size, device, progress, preamble)
    acc, acc_norm = [], []
    for (_, _, gold, lens), scores in zip(items, ll):
        acc.append(int(max(range(len(scores)), key=lambda i: scores[i]) == gold))
        if lens is not None:
            acc_norm.append(int(max(range(len(scores)), key=lambda i: scores[i] / lens[i]) == gold))
    return {"acc": acc, "acc_norm": acc_norm or None}


def reference_rates(task, docs):
    """(chance, majority): chance = 1 / number of choices, averaged over the items; majority = the rate of
    the most frequent right answer for two-choice tasks (always answering it scores that), else None."""
    items = [mc_item(task, d) for d in docs]
    chance = sum(1 / len(labels) for _, labels, _ in items) / len(items)
    if any(len(labels) != 2 for _, labels, _ in items):
        return chance, None
    first = sum(gold == 0 for _, _, gold in items) / len(items)
    return chance, max(first, 1 - first)


class Progress:
    def __init__(self, task, total, every=10.0, what="questions"):
        self.task, self.total, self.done, self.t0, self.last, self.every = task, total, 0, time.time(), time.time(), every
        self.what = what

    def __call__(self, n):
        self.done += n
        now = time.time()
        if now - self.last > self.every and self.done < self.total:
            rate = self.done / (now - self.t0)
            print(f"  {self.task}: {self.done:.0f}/{self.total} {self.what}, {rate:.2f}/s, "
                  f"eta {(self.total - self.done) / max(rate, 1e-9):.0f}s", file=sys.stderr, flush=True)
            self.last = now


@torch.no_grad()
def evaluate(model, tok, task, docs, scoring="cloze", batch_size=16, device="cpu", preamble=None):
    progress = Progress(task, len(docs))
    t0 = time.time()
    fn = score_mc if scoring == "mc" else score_cloze
    scores = fn(model, tok, task, docs, batch_size, device, progress, preamble)
    wall = time.time() - t0
    acc, se = summarize(scores["acc"])
    chance, majority = reference_rates(task, docs)
    res = {"task": task, "kind": "mc", "scoring": scoring, "metric": "acc", "n": len(docs), "score": acc,
           "accuracy": acc, "stderr": se, "chance": chance, "majority": majority,
           "wall_s": round(wall, 2), "questions_per_s": round(len(docs) / wall, 2)}
    if scores.get("acc_norm"):
        res["acc_norm"], res["acc_norm_stderr"] = summarize(scores["acc_norm"])
    return res


# --------------------------------------------------------------------------------------------
# tasks, descriptions and adapter sources


def load_task(spec, data_dir, limit):
    """spec: a benchmark name, "gsm8k", ("sni", name) or ("sni-file", path) -> {"name", "kind", docs/items}."""
    if isinstance(spec, tuple):
        kind, what = spec
        path = os.path.join(data_dir, "sni", what + ".json") if kind == "sni" else what
        if not os.path.isfile(path):
            if kind == "sni":
                raise ValueError(f"unknown SNI task '{what}': no file {path} (see {data_dir}/sni, or pass --sni-file)")
            raise ValueError(f"--sni-file {path} not found")
        t = load_sni_eval(path)
        items = [{"id": x["id"], "user": sni_prompt(t["definition"], x["input"]), "references": x["outputs"]}
                 for x in t["instances"][:limit]]
        return {"name": what if kind == "sni" else t["name"], "kind": "sni", "items": items}
    if spec == "gsm8k":
        path, docs = load_gsm8k(data_dir, limit)
        items = []
        for n, d in enumerate(docs):
            try:
                gold = gsm8k_gold(d["answer"])
            except ValueError as e:
                raise ValueError(f"{path}: item {n}: {e}") from None
            items.append({"id": f"gsm8k-{n}", "user": gsm8k_user(d["question"]), "prefill": GSM8K_PREFILL, "gold": gold})
        return {"name": "gsm8k", "kind": "gsm8k", "items": items}
    docs = load_benchmark(spec, data_dir)
    if limit and limit > len(docs):
        print(f"{spec}: --limit {limit} is beyond the split ({len(docs)}); using all of it", file=sys.stderr)
    return {"name": spec, "kind": "mc", "docs": docs[:limit] if limit else docs}


def task_descriptions(name, data_dir):
    """The task's 3 held-out descriptions (eval_descriptions.json), else its first 3 generated ones."""
    ev = load_eval_descriptions(data_dir)["eval_descriptions"]
    if name in ev:
        return ev[name]
    if os.path.isfile(os.path.join(data_dir, "tasks", "descriptions", name + ".json")):
        return load_descriptions(data_dir, name)[:3]
    raise ValueError(f"task '{name}' has no descriptions in {data_dir}/tasks: pass --description \"...\"")


def other_task(name, data_dir):
    """The task whose descriptions make the "another task's description" control: the next held-out SNI
    task for an SNI task, the next benchmark for a benchmark (a fixed cycle, so runs are comparable)."""
    group = list(BENCHMARKS) if name in BENCHMARKS else list(load_splits(data_dir)["heldout"])
    if name in group:
        return group[(group.index(name) + 1) % len(group)]
    return next(t for t in group if t != name)


def plan_runs(name, data_dir, base_source, t2l, prepend, description=None, controls=False, with_base=False):
    """[(adapter source, description, preamble)] for one task; the T2L ones get their adapter later."""
    runs = [(base_source, None, None)] if with_base or not (t2l or prepend) else []
    descs = [description] if description else (task_descriptions(name, data_dir) if t2l or prepend else [])
    if prepend:
        runs += [("base+description", d, d) for d in descs]
    if t2l:
        runs += [("t2l", d, None) for d in descs]
        if controls:
            runs += [("t2l-nonsense", d, None) for d in load_eval_descriptions(data_dir)["nonsense_descriptions"]]
            runs += [("t2l-other", d, None) for d in task_descriptions(other_task(name, data_dir), data_dir)]
    return runs


def adapter_bank(net, hcfg, meta, model, tok, descriptions, device):
    """Hypernetwork adapters for a list of descriptions, one row each, in the per-example format."""
    with torch.no_grad():
        lora = net(embed_descriptions(model, tok, descriptions).to(device))  # {module: (A (n, L, r, d_in), B)}
    return {**lora, "scale": lora_scale(hcfg.r, meta.get("lora_alpha", 16), meta.get("rslora", True))}


def run_task(model, tok, task, runs, t2l, args):
    """Score one task under every run; the T2L runs get rows of one adapter bank. -> results incl. means."""
    need = list(dict.fromkeys(d for s, d, _ in runs if s.startswith("t2l")))
    bank = adapter_bank(*t2l, model, tok, need, args.device) if need else None
    runs = [(s, d, p, need.index(d) if s.startswith("t2l") else None) for s, d, p in runs]
    if task["kind"] != "mc":
        max_new = args.max_new_tokens or MAX_NEW_TOKENS[task["kind"]]
        results = evaluate_generation(model, tok, task, runs, bank, max_new, args.batch_size, args.device,
                                      Progress(task["name"], len(task["items"]) * len(runs), what="generations"))
    else:
        results = []
        for source, desc, preamble, row in runs:
            if row is not None:  # one static adapter at a time: the mc/cloze scorers batch one adapter
                hcfg, meta = t2l[1], t2l[2]
                set_adapters(model, {k: (v[0][row], v[1][row]) for k, v in bank.items() if k != "scale"}, hcfg.r,
                             meta.get("lora_alpha", 16), meta.get("rslora", True))
            try:
                results.append(evaluate(model, tok, task["name"], task["docs"], args.scoring, args.batch_size,
                                        args.device, preamble))
            finally:
                if row is not None:
                    set_adapters(model, None)
    for res, (source, desc, _, _) in zip(results, runs):
        res.update(adapter=source, description=desc)
        if source == "t2l-other":
            res["other_task"] = other_task(task["name"], args.data)
        report(res)
    for source in dict.fromkeys(s for s, _, _, _ in runs):
        scored = [r for r in results if r["adapter"] == source]
        if len(scored) > 1:
            mean = {k: sum(r[k] for r in scored) / len(scored)
                    for k in ("score", "accuracy", "acc_norm", "rougeL", "exact_match", "chance", "majority")
                    if k in scored[0] and scored[0][k] is not None}
            print(f"{task['name']} {source} mean over {len(scored)} descriptions: {100 * mean['score']:.2f}", flush=True)
            results.append({"task": task["name"], "kind": task["kind"], "metric": scored[0]["metric"],
                            "adapter": source + "-mean", "n": scored[0]["n"], "stderr": None, "descriptions": len(scored),
                            **mean})
    return results


def report(res):
    if res["kind"] == "mc":
        line = f"{res['task']:14s} {res['scoring']:5s} acc {100 * res['accuracy']:.2f} +- {100 * res['stderr']:.2f}"
        if "acc_norm" in res:
            line += f"  acc_norm {100 * res['acc_norm']:.2f} +- {100 * res['acc_norm_stderr']:.2f}"
        line += f"  (chance {100 * res['chance']:.2f}"
        line += f", majority {100 * res['majority']:.2f})" if res["majority"] is not None else ")"
        rate = f"{res['questions_per_s']:.1f} q/s"
    elif res["kind"] == "sni":
        line = f"{res['task']} rougeL {100 * res['rougeL']:.2f}  exact_match {100 * res['exact_match']:.2f}"
        rate = f"{res['new_tokens_per_s']:.1f} new tok/s"
    else:
        line = f"{res['task']:14s} acc {100 * res['accuracy']:.2f} +- {100 * res['stderr']:.2f}"
        rate = f"{res['new_tokens_per_s']:.1f} new tok/s"
    if res.get("description"):
        line += f"  [{res['adapter']}: {res['description'][:50]!r}]"
    print(f"{line}  n={res['n']}  {res['wall_s']:.1f}s  {rate}", flush=True)


# --------------------------------------------------------------------------------------------
# command line


def limit_arg(s):
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--limit must be a whole number, got '{s}'") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"--limit must be positive, got {v}")
    return v


def task_specs(p, args):
    """The tasks named on the command line as load_task specs, in order."""
    specs = []
    for t in [t.strip() for t in (args.task or "").split(",") if t.strip()]:
        if t == "all":
            specs += list(TASKS)
        elif t == "sni-heldout":
            specs += [("sni", n) for n in load_splits(args.data)["heldout"]]
        elif t.startswith("sni:") and t[4:]:
            specs.append(("sni", t[4:]))
        elif t in BENCHMARKS:
            specs.append(t)
        else:
            p.error(f"unknown task '{t}' (choose from {', '.join(BENCHMARKS)}, 'all', 'sni:NAME' or 'sni-heldout')")
    specs += [("sni-file", f) for f in args.sni_file]
    return specs


def score_tasks(model, tok, tasks, t2l, library, settings, args):
    """Every run of every task (the adapter sources the options ask for) -> results, one per run."""
    results = []
    for task in tasks:
        if library:  # a library folder: each task's own adapter, DIR/<task>
            set_adapters(model, None)
            load_adapter(model, os.path.join(args.lora, task["name"]))
        if args.table:
            runs = plan_runs(task["name"], args.data, "base", t2l, True, controls=True, with_base=True)
        else:
            runs = plan_runs(task["name"], args.data, "lora" if args.lora else "base", t2l,
                             args.prepend_description, args.description, args.controls)
        where = {"lora": os.path.join(args.lora, task["name"])} if library else {}
        results += [{**r, **settings, **where} for r in run_task(model, tok, task, runs, t2l, args)]
        if args.mt_lora:  # a static adapter on the model for this column only
            load_adapter(model, args.mt_lora)
            try:
                res = run_task(model, tok, task, [("mt-lora", None, None)], None, args)
            finally:
                set_adapters(model, None)
            results += [{**r, **settings, "lora": args.mt_lora} for r in res]
    return results


def main(argv=None):
    p = Parser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default=None, help=f"a task, a comma list, 'all' (the seven benchmarks), 'gsm8k', "
                                                f"'sni:NAME', 'sni-heldout' ({', '.join(TASKS)})")
    p.add_argument("--sni-file", action="append", default=[], metavar="PATH", help="score any file in the SNI task format")
    p.add_argument("--table", action="store_true", help="the comparison table: every column on the SNI held-out "
                                                        "tasks, the seven benchmarks and GSM8K (or on --task)")
    p.add_argument("--scoring", choices=("mc", "cloze"), default=None, help="multiple-choice scoring (default cloze)")
    p.add_argument("--limit", type=limit_arg, default=None, help="first N questions/instances of each task")
    p.add_argument("--max-new-tokens", type=limit_arg, default=None,
                   help=f"generation tasks: token limit per answer (default {MAX_NEW_TOKENS})")
    p.add_argument("--batch-size", type=int, default=16, help="questions (or generations) per forward pass")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="bf16")
    p.add_argument("--model", default="assets/models/SmolLM2-135M-Instruct", help="HF-layout model folder")
    p.add_argument("--data", default="assets/data", help="prepared data folder")
    p.add_argument("--lora", default=None, help="PEFT-format adapter folder to apply, or a library folder (one adapter "
                                                "per task, DIR/<task>: each task gets its own)")
    p.add_argument("--mt-lora", default=None, help="with --table: the multi-task LoRA column's PEFT adapter folder")
    p.add_argument("--t2l", default=None, help="T2L run folder: score adapters generated from descriptions")
    p.add_argument("--description", default=None, help="with --t2l: this description instead of the task's 3 held-out ones")
    p.add_argument("--controls", action="store_true",
                   help="with --t2l: also adapters from the nonsense descriptions and from another task's descriptions")
    p.add_argument("--prepend-description", action="store_true",
                   help="baseline: no adapter, each held-out description opens the prompt (or the cloze context)")
    p.add_argument("--spread", action="store_true", help="with --t2l, no scoring: how far apart the adapters of the "
                   "tasks' held-out descriptions, of different tasks and of nonsense descriptions are (||B A|| distances)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (needs g++ on CPU, triton on CUDA)")
    args = p.parse_args(argv)
    if not (args.task or args.sni_file or args.table or args.spread):
        p.error("name the tasks: --task T (or --sni-file PATH, or --table)")
    if args.table and (args.description or args.lora or args.prepend_description or args.controls):
        p.error("--table runs every column itself: leave out --description, --lora, --prepend-description, --controls")
    if args.spread and (not args.t2l or args.table or args.lora or args.mt_lora or args.description or args.controls
                        or args.prepend_description or args.sni_file):
        p.error("--spread compares the adapters --t2l RUN writes for the tasks' descriptions: it takes --task and --t2l "
                "only (no --table, --lora, --mt-lora, --description, --controls, --prepend-description, --sni-file)")
    if args.mt_lora and not args.table:
        p.error("--mt-lora fills the table's multi-task LoRA column: use it with --table (or pass --lora DIR)")
    try:
        specs = task_specs(p, args)
        if (args.table or args.spread) and not specs:
            specs = [("sni", n) for n in load_splits(args.data)["heldout"]] + list(TASKS) + ["gsm8k"]
    except (FileNotFoundError, ValueError) as e:
        p.error(str(e))
    if args.scoring and not args.table and any(s == "gsm8k" or isinstance(s, tuple) for s in specs):
        p.error("--scoring applies to the multiple-choice benchmarks only; generation tasks (sni:..., --sni-file, "
                "gsm8k) are scored by their own metric (ROUGE-L / exact match, accuracy)")
    args.scoring = args.scoring or "cloze"
    if args.out:  # check before the run, not after it: a long evaluation must not end in "cannot write"
        out_dir = os.path.dirname(os.path.abspath(args.out))
        try:
            os.makedirs(out_dir, exist_ok=True)
        except OSError as e:
            p.error(f"cannot create the folder of --out '{args.out}': {e.strerror}")
        if not os.access(out_dir, os.W_OK) or os.path.isdir(args.out):
            p.error(f"cannot write --out '{args.out}'")
    settings = {k: getattr(args, k) for k in ("scoring", "limit", "batch_size", "device", "dtype", "model", "lora", "t2l")}
    table = None
    try:
        tasks = [load_task(s, args.data, args.limit) for s in specs]  # every file checked before the model loads
        library = args.lora and not os.path.isfile(os.path.join(args.lora, "adapter_config.json"))
        for t in tasks if library else ():
            if not os.path.isfile(os.path.join(args.lora, t["name"], "adapter_config.json")):
                raise FileNotFoundError(f"--lora {args.lora}: neither an adapter nor a library with an adapter for "
                                        f"{t['name']} ({os.path.join(args.lora, t['name'])})")
        torch.manual_seed(0)
        model = Transformer.from_pretrained(args.model, device=args.device, dtype=DTYPES[args.dtype])
        if args.compile:
            why = compile_model(model, args.device)
            if why:
                print(f"warning: --compile: {why}; running uncompiled", file=sys.stderr)
        tok = Tokenizer(args.model)
        if args.lora and not library:
            load_adapter(model, args.lora)
        t2l = load_checkpoint(args.t2l, model=model, device=args.device) if args.t2l else None  # (net, hcfg, meta)
        if args.spread:  # nothing is scored: how far apart the adapters of the tasks' descriptions are
            names = [t["name"] for t in tasks]
            descs = [(n, d) for n in names for d in task_descriptions(n, args.data)]
            descs += [("nonsense", d) for d in load_eval_descriptions(args.data)["nonsense_descriptions"]]
            results = [{**adapter_spread(t2l[0], model, tok, descs, names, args.device), **settings}]
        else:
            results = score_tasks(model, tok, tasks, t2l, library, settings, args)
        if args.table:
            names = [t["name"] for t in tasks]
            table = make_table(results, [t["name"] for t in tasks if t["kind"] == "sni"],
                               [t["name"] for t in tasks if t["kind"] == "mc"], "gsm8k" in names)
            print(markdown(table), flush=True)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    if args.out:
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"results": results, **({"table": table} if table else {})}, f, indent=2)
        os.replace(tmp, args.out)
    return results


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback (checkpoints are written atomically)
        print("error: interrupted (evaluation stopped: nothing was written; rerun to score)", file=sys.stderr)
        sys.exit(130)

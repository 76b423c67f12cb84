"""
Generation-scored tasks: batched greedy decoding in which every row wears its own adapter, and the scoring of
its answers (eval.py runs it for sni:NAME, sni-heldout, --sni-file and gsm8k).

  generate_rows        greedy continuations of many prompts, left-padded into batches; row i decodes with
                       adapter rows[i] of a bank (per-example A and B, as in training), so one batch mixes tasks,
                       descriptions and the base model. What a server of many T2L adapters needs.
  evaluate_generation  all runs (adapter sources) of one task in one decoding pass -> one result per run, with
                       every instance's prediction and references kept, so any scorer can be re-run on them
  score_item           SNI: ROUGE-L and exact match, best over the references; GSM8K: the last number of the
                       generation against the number after "####" (metrics.py)
"""
import time

import torch

from metrics import exact_match, last_number, numbers_equal, rouge_l, summarize

MAX_NEW_TOKENS = {"sni": 64, "gsm8k": 256}  # SNI answers are short; GSM8K needs room for the reasoning


def pad_left(seqs, pad_id, device):
    # generation appends at the right end of every row, so prompts are padded on the left
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), T, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, T - len(s):] = torch.tensor(s)
        mask[i, T - len(s):] = 1
    return ids.to(device), mask.to(device)


def generate_rows(model, prompts, rows, bank, max_new_tokens, eos_id, pad_id, batch_size, device, progress=None):
    """Greedy continuations (lists of new token ids) of token-id prompts, batched with left padding; prompt i
    decodes with adapter rows[i] of the bank (None: no adapter), so one batch mixes tasks and descriptions.
    bank: {module: (A (n, L, r, d_in), B (n, L, d_out, r)), "scale": float}, e.g. a hypernetwork output."""
    out = [None] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths: little padding
    for b in range(0, len(order), batch_size):
        idx = order[b:b + batch_size]
        ids, mask = pad_left([prompts[i] for i in idx], pad_id, device)
        lora = None
        if bank is not None and any(rows[i] is not None for i in idx):
            pick = torch.tensor([0 if rows[i] is None else rows[i] for i in idx], device=device)
            lora = {"scale": bank["scale"]}
            keep = torch.tensor([rows[i] is not None for i in idx], device=device)[:, None, None, None]
            for name, AB in bank.items():
                if name != "scale":
                    lora[name] = (AB[0][pick], AB[1][pick] * keep)  # a row without adapter: B = 0, the base model
        new = model.generate(ids, mask, max_new_tokens=max_new_tokens, eos_id=eos_id, lora=lora)  # (b, n)
        for row, i in enumerate(idx):
            out[i] = new[row].tolist()
        if progress:
            progress(len(idx))
    return out


def stop_ids(tok):
    # the end of the assistant's turn: the tokenizer's eos and the usual end-of-turn specials it has
    ids = {tok.eos_id} | {tok.tok.token_to_id(t) for t in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>")}
    return ids - {None}


def decode_answer(tok, ids, stops):
    cut = next((j for j, t in enumerate(ids) if t in stops), len(ids))
    return tok.decode(ids[:cut], skip_special_tokens=True).strip()


def gen_prompt(tok, item, preamble=None):
    user = f"{preamble}\n\n{item['user']}" if preamble else item["user"]
    return tok.encode(tok.chat([{"role": "user", "content": user}]) + item.get("prefill", ""))


def score_item(kind, item, prediction):
    if kind == "sni":
        return {"references": item["references"], "rougeL": rouge_l(prediction, item["references"]),
                "exact_match": exact_match(prediction, item["references"])}
    value = last_number(prediction)  # gsm8k
    return {"gold": item["gold"], "predicted": value, "correct": int(numbers_equal(value, item["gold"]))}


@torch.no_grad()
def evaluate_generation(model, tok, task, runs, bank, max_new_tokens, batch_size, device, progress=None):
    """All runs of one generation task in one decoding pass: the rows are (run, item) pairs, each with its
    run's adapter and prompt. Returns one result per run, each with every instance's prediction."""
    items, kind = task["items"], task["kind"]
    pairs = [(r, i) for r in range(len(runs)) for i in range(len(items))]
    prompts = [gen_prompt(tok, items[i], runs[r][2]) for r, i in pairs]
    rows = [runs[r][3] for r, _ in pairs]
    stops = stop_ids(tok)
    t0 = time.time()
    new = generate_rows(model, prompts, rows, bank, max_new_tokens, tok.eos_id, tok.pad_id, batch_size, device,
                        progress)
    wall = time.time() - t0
    n_new = sum(next((j + 1 for j, t in enumerate(x) if t in stops), len(x)) for x in new)
    results = []
    for r, (source, desc, _, _) in enumerate(runs):
        per = []
        for i, item in enumerate(items):
            pred = decode_answer(tok, new[r * len(items) + i], stops)
            per.append({"id": item["id"], "prediction": pred, **score_item(kind, item, pred)})
        res = {"task": task["name"], "kind": kind, "n": len(items), "max_new_tokens": max_new_tokens}
        if kind == "sni":
            res["metric"] = "rougeL"
            res["score"] = res["rougeL"] = sum(x["rougeL"] for x in per) / len(per)
            res["exact_match"] = sum(x["exact_match"] for x in per) / len(per)
        else:
            res["metric"] = "acc"
            res["score"], res["stderr"] = summarize([x["correct"] for x in per])
            res["accuracy"] = res["score"]
        # the runs shared one decoding pass: its time and throughput are reported with each of them
        res.update({"wall_s": round(wall, 2), "runs_in_pass": len(runs), "new_tokens_per_s": round(n_new / wall, 1),
                    "instances": per})
        results.append(res)
    return results

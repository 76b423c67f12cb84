"""
What Text-to-LoRA adds, read from eval.py's results: the paper's comparison table (rows = tasks, columns =
adapter sources, as Markdown) and the spread of the adapters a T2L run writes (does the description decide
the adapter?). Nothing is scored here: the spread embeds the descriptions and runs the hypernetwork once.
"""
import torch

from lora import delta_w_gram
from t2l import embed_descriptions


COLUMNS = [("base", "base"), ("base + description", "base+description"), ("multi-task LoRA", "mt-lora"),
           ("T2L", "t2l"), ("T2L, nonsense desc.", "t2l-nonsense"), ("T2L, other task's desc.", "t2l-other")]


def make_table(results, sni_names, bench_names, with_gsm8k):
    """{"columns", "rows": [[row name, value or None per column]]}: a cell is the mean over the column's
    descriptions (ROUGE-L for SNI, accuracy otherwise, in %); averages only over complete columns."""
    cell = {}
    for r in results:
        source = r["adapter"][:-len("-mean")] if r["adapter"].endswith("-mean") else r["adapter"]
        if r["adapter"].endswith("-mean") or (r["task"], source) not in cell:
            cell[(r["task"], source)] = 100 * r["score"]
    rows = []

    def add(names, average):
        for name in names:
            rows.append([name] + [cell.get((name, src)) for _, src in COLUMNS])
        if average and names:
            vals = [[cell.get((n, src)) for n in names] for _, src in COLUMNS]
            rows.append([average] + [None if None in v else sum(v) / len(v) for v in vals])
    add(sni_names, f"SNI held-out average ({len(sni_names)}, ROUGE-L)")
    add(bench_names, f"benchmark average ({len(bench_names)}, acc)")
    if with_gsm8k:
        add(["gsm8k"], None)
    return {"columns": [c for c, _ in COLUMNS], "rows": rows}


def markdown(table):
    lines = ["| task | " + " | ".join(table["columns"]) + " |", "|---" * (len(table["columns"]) + 1) + "|"]
    for name, *vals in table["rows"]:
        bold = "average" in name
        fmt = lambda v: "-" if v is None else (f"**{v:.2f}**" if bold else f"{v:.2f}")
        lines.append(f"| {'**' + name + '**' if bold else name} | " + " | ".join(fmt(v) for v in vals) + " |")
    return "\n".join(lines)


def distance_blocks(dist, label, names):
    """Mean distances from each task's rows of `dist`: among themselves, to other tasks' rows (mean over the
    tasks, and the nearest task) and to the "nonsense" rows. -> ({name: {...}}, their means)"""
    rows = {}
    for name in names:
        mine = [i for i, n in enumerate(label) if n == name]
        block = lambda other: dist[mine][:, [i for i, n in enumerate(label) if n == other]].mean().item()
        others = {n: block(n) for n in names if n != name}
        nearest = min(others, key=others.get) if others else None
        rows[name] = {"within": dist[mine][:, mine][~torch.eye(len(mine), dtype=torch.bool)].mean().item(),
                      "other_tasks": sum(others.values()) / len(others) if others else None,
                      "nearest_task": nearest, "nearest": others.get(nearest), "nonsense": block("nonsense")}
    mean = {k: sum(r[k] for r in rows.values()) / len(rows) for k in ("within", "other_tasks", "nearest", "nonsense")
            if all(r[k] is not None for r in rows.values())}
    return rows, mean


def adapter_spread(net, model, tok, descs, names, device):
    """Does the description decide the adapter? For each task's 3 held-out descriptions and the nonsense ones:
    distances between their embeddings (||e_a - e_b||) and between their adapters (||dW_a - dW_b||, dW = B A
    over every module and layer), each as a fraction of the mean norm, within a task, to other tasks' and to
    the nonsense ones. descs: [(task name or "nonsense", description)]
    -> {"spread": {"embedding": {"tasks", "mean"}, "adapter": {"tasks", "mean", "norm"}}}"""
    emb = embed_descriptions(model, tok, [d for _, d in descs]).double()
    with torch.no_grad():
        gram = delta_w_gram(net(emb.float().to(device)))  # {module: (A, B)} -> (n, n)
    sq = gram.diag()
    dists = {"embedding": torch.cdist(emb, emb) / emb.norm(dim=1).mean(),
             "adapter": (sq[:, None] + sq[None] - 2 * gram).clamp(min=0).sqrt() / sq.sqrt().mean()}
    out = {}
    for what, dist in dists.items():
        rows, mean = distance_blocks(dist, [n for n, _ in descs], names)
        out[what] = {"tasks": rows, "mean": mean}
    out["adapter"]["norm"] = sq.sqrt().mean().item()
    fmt = lambda r, k: f"{r[k]:.4f}" if r.get(k) is not None else "-"
    print("distances / mean norm, within a task's 3 held-out descriptions, to other tasks' (mean, nearest task) and "
          f"to the nonsense ones': of their embeddings | of their adapters B A (mean ||B A|| {sq.sqrt().mean().item():.4g})")
    for name in names + ["mean"]:
        print(f"{name}: " + " | ".join(
            f"{what} {fmt(r, 'within')} / {fmt(r, 'other_tasks')}, {fmt(r, 'nearest')}"
            + (f" ({r['nearest_task']})" if r.get("nearest_task") else "") + f" / {fmt(r, 'nonsense')}"
            for what, r in ((w, out[w]["mean"] if name == "mean" else out[w]["tasks"][name]) for w in dists)), flush=True)
    return {"spread": out}

"""
Train a Text-to-LoRA hypernetwork with the SFT recipe (T2L_NOTES section 5): every example carries
the adapter generated from one of its task's descriptions, the frozen base model runs with it, and
the next-token loss on the response trains only the hypernetwork.

    description -> embedding (base model, cached) -> hypernetwork -> A, B per layer -> base model -> loss

    python train.py --size small                       # CPU defaults, default base model
    python train.py --size large --steps 2000 --out runs/t2l-large --resume
    torchrun --nproc_per_node 2 train.py --size small  # data parallel (gloo on CPU, nccl on GPU)
"""
import json
import math
import os
import random
import sys
import time
from contextlib import nullcontext
from functools import partial

import torch
import torch.nn.functional as F

import plot
from data import Parser, Tokenizer, load_descriptions, load_eval_descriptions, load_splits, load_sni_task, sni_prompt
from model import Transformer, compile_model
from t2l import (ENCODER, EmbeddingCache, HyperConfig, HyperNetwork, base_model_meta, cache_folder, embed_descriptions,
                 load_checkpoint, save_checkpoint)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def encode_example(tok, definition, inp, out, max_len):
    """(ids, n_prompt): the chat-templated prompt followed by the response; loss goes on the response."""
    user = [{"role": "user", "content": sni_prompt(definition, inp)}]
    prompt = tok.chat(user)
    full = tok.chat(user + [{"role": "assistant", "content": out}], add_generation_prompt=False)
    assert full.startswith(prompt), "chat template does not extend the prompt with the response"
    p, t = tok.encode(prompt), tok.encode(full[len(prompt):])  # response incl. the end-of-turn token
    t = t[:max_len // 2]
    if len(p) + len(t) > max_len:  # keep the head (definition) and the tail (input end, assistant header)
        keep = max_len - len(t)
        p = p[:keep // 2] + p[len(p) - (keep - keep // 2):]
    return p + t, len(p)


def load_tasks(tok, data_dir, names, max_len, n_desc):
    """{task: (examples [(ids, n_prompt)], descriptions [str])} for the tasks present in data_dir."""
    tasks = {}
    for name in names:
        path = os.path.join(data_dir, "sni", name + ".json")
        if not os.path.isfile(path):
            continue
        task = load_sni_task(path)
        examples = [encode_example(tok, task["definition"], i, o, max_len) for i, o in task["instances"]]
        tasks[name] = (examples, load_descriptions(data_dir, name)[:n_desc])
    return tasks


def make_batch(examples, pad_id, device):
    """Right-padded ids, mask, and the loss mask of the positions that predict response tokens."""
    T = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(examples), T, dtype=torch.long)
    target = torch.zeros(len(examples), T, dtype=torch.bool)
    for i, (x, n_prompt) in enumerate(examples):
        ids[i, :len(x)] = torch.tensor(x)
        mask[i, :len(x)] = 1
        target[i, n_prompt:len(x)] = True
    return ids.to(device), mask.to(device), target.to(device)


def response_ce(model, ids, mask, target, lora=None, label_smoothing=0.1, neftune=0.0):
    """Per-example mean next-token cross-entropy on the response tokens (B,), with NEFTune noise."""
    x = model.model.embed_tokens(ids)  # (B, T, dim)
    if neftune > 0:  # NEFTune (Jain et al. 2023): uniform noise of norm alpha / sqrt(T * dim)
        scale = neftune / (mask.sum(1, keepdim=True) * x.shape[-1]).sqrt()  # (B, 1)
        x = x + (torch.rand_like(x) * 2 - 1) * scale[..., None].to(x.dtype) * mask[..., None].to(x.dtype)
    h = model.hidden(ids, mask, lora=lora, embeds=x)  # (B, T, dim)
    pred = target[:, 1:]  # position t predicts token t + 1
    logits = model.lm_head(h[:, :-1][pred]).float()  # (N, vocab): only the response positions
    tok_loss = F.cross_entropy(logits, ids[:, 1:][pred], label_smoothing=label_smoothing, reduction="none")
    per_sample = torch.zeros(ids.shape[0], device=ids.device).index_add(0, pred.nonzero()[:, 0], tok_loss)
    return per_sample / pred.sum(1).clamp(min=1)  # (B,)


def adapter_l2(adapters):
    return sum(A.pow(2).mean() + B.pow(2).mean() for A, B in adapters.values())


def t2l_loss(model, hypernet, emb, ids, mask, target, label_smoothing=0.1, reg=1e-3, neftune=0.0):
    """The whole batch in one padded forward: the reference that t2l_step must equal (tests), and validation."""
    adapters = hypernet(emb)  # {module: (A (B, L, r, d_in), B (B, L, d_out, r))}
    ce = response_ce(model, ids, mask, target, adapters, label_smoothing, neftune).mean()  # per-sample, then batch mean
    return ce, ce + reg * adapter_l2(adapters)


def micro_batches(lengths, budget):
    """Example indices sorted by length and cut into groups whose padded size (rows x longest) stays within
    `budget` tokens (a longer example gets a group of its own): little padding, bounded activation memory."""
    groups, cur = [], []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        if cur and (len(cur) + 1) * lengths[i] > budget:
            groups.append(cur)
            cur = []
        cur.append(i)
    return groups + [cur] if cur else groups


def accumulate(model, examples, pad_id, device, budget, ctx, adapters=None, label_smoothing=0.1, neftune=0.0):
    """Forward and backward over length-grouped micro-batches; gradients reach whatever requires them (the
    per-example adapters given, or static LoRA parameters). The summed loss is exactly the batch's
    per-sample mean, so the gradient is that of one padded batch up to floating-point order.
    -> (mean response CE over the examples, tokens computed incl. padding)"""
    n, total, computed = len(examples), 0.0, 0
    for g in micro_batches([len(ids) for ids, _ in examples], budget):
        ids, mask, target = make_batch([examples[i] for i in g], pad_id, device)
        lora = None if adapters is None else {k: (A[g], B[g]) for k, (A, B) in adapters.items()}
        with ctx:
            ce = response_ce(model, ids, mask, target, lora, label_smoothing, neftune).sum() / n
        ce.backward()
        total += ce.detach()
        computed += ids.numel()
    return total, computed


def t2l_step(model, hypernet, emb, examples, pad_id, device, budget, ctx, label_smoothing=0.1, reg=1e-3, neftune=0.0):
    """One SFT step's gradients: the hypernetwork runs once for the batch; its adapters are cut loose from its
    graph, the base model runs micro-batch by micro-batch accumulating their gradients, and one backward through
    the hypernetwork (plus the L2 on A and B) finishes. -> (ce, loss, tokens computed)"""
    with ctx:
        adapters = hypernet(emb)  # {module: (A (B, L, r, d_in), B (B, L, d_out, r))}
        l2 = adapter_l2(adapters)
    leaves = {k: (A.detach().requires_grad_(), B.detach().requires_grad_()) for k, (A, B) in adapters.items()}
    ce, computed = accumulate(model, examples, pad_id, device, budget, ctx, leaves, label_smoothing, neftune)
    outs, grads = [reg * l2], [torch.ones_like(l2)]
    for k, (A, B) in adapters.items():
        outs += [A, B]
        grads += [leaves[k][0].grad, leaves[k][1].grad]
    torch.autograd.backward(outs, grads)
    return ce, ce + reg * l2.detach(), computed


def sample_batch(tasks, names, n_tasks, k, seed):
    """n tasks x k examples, each with one of its task's descriptions; a function of the seed alone,
    so a resumed run sees exactly the batches it would have seen."""
    rng = random.Random(seed)
    batch = []
    for name in rng.sample(names, min(n_tasks, len(names))):
        examples, descs = tasks[name]
        for ex in rng.sample(examples, min(k, len(examples))):
            batch.append((ex, (name, rng.randrange(len(descs)))))
    return batch


def positive(s):
    v = int(s)
    if v <= 0:
        raise ValueError(s)
    return v


def lr_at(step, steps, lr, warmup):
    w = max(1, int(warmup * steps))
    return lr * (step + 1) / w if step < w else lr * max(0.0, (steps - step) / max(1, steps - w))


def main():
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=("large", "medium", "small"), default="small")
    p.add_argument("--steps", type=positive, default=1000)
    p.add_argument("--tasks-per-batch", type=positive, default=8, help="n tasks per step (paper: 8)")
    p.add_argument("--examples-per-task", type=positive, default=1, help="k examples of each (paper: 1)")
    p.add_argument("--lr", type=float, default=1e-4, help="paper: 2.5e-5 for 1.18M steps; short runs need more")
    p.add_argument("--warmup", type=float, default=0.1, help="fraction of steps of linear warmup")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--max-len", type=positive, default=256, help="tokens per example (paper: 512)")
    p.add_argument("--micro-tokens", type=positive, default=1024,
                   help="padded tokens per micro-batch (examples grouped by length; the step's result does not depend "
                        "on it; a GPU wants the whole batch: tasks x examples x max-len)")
    p.add_argument("--descriptions-per-task", type=positive, default=128, help="first N generated descriptions (paper: 128)")
    p.add_argument("--neftune", type=float, default=5.0)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--reg", type=float, default=1e-3, help="weight of the L2 on generated A and B")
    p.add_argument("--latent", type=int, default=128)
    p.add_argument("--dropout", type=float, default=0.05, help="hypernetwork dropout and LoRA input dropout (paper: 0.05)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="bf16", help="base model weights (hypernetwork stays fp32)")
    p.add_argument("--model", default="assets/models/SmolLM2-135M-Instruct")
    p.add_argument("--data", default="assets/data")
    p.add_argument("--embedding-cache", default=os.environ.get("T2L_EMBEDDING_CACHE", "assets/cache/embeddings"),
                   help="description embeddings shared by every run, one folder per base model and dtype "
                        "(default $T2L_EMBEDDING_CACHE or assets/cache/embeddings)")
    p.add_argument("--out", default=None, help="run folder (default runs/t2l-<size>)")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the base model (needs g++ on CPU, triton on CUDA)")
    p.add_argument("--log-every", type=positive, default=10)
    p.add_argument("--eval-every", type=positive, default=100)
    p.add_argument("--val-examples", type=positive, default=8, help="per held-out task")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    out = args.out or f"runs/t2l-{args.size}"

    ddp = "RANK" in os.environ
    rank, world = 0, 1
    if ddp:
        torch.distributed.init_process_group("nccl" if args.device.startswith("cuda") else "gloo")
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        if args.device.startswith("cuda"):
            args.device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
            torch.cuda.set_device(args.device)
    master = rank == 0
    log = (lambda *a: print(*a, flush=True)) if master else (lambda *a: None)

    latest = os.path.join(out, "latest")
    try:
        if os.path.exists(latest) and not args.resume:
            raise ValueError(f"{out} already holds a run: pass --resume to continue it, or another --out")
        if (args.tasks_per_batch * args.examples_per_task) % world:
            raise ValueError(f"the global batch ({args.tasks_per_batch} x {args.examples_per_task}) must split evenly "
                             f"over {world} processes")
        model = Transformer.from_pretrained(args.model, device=args.device, dtype=DTYPES[args.dtype])
        model.requires_grad_(False)
        meta = base_model_meta(model, os.path.abspath(args.model))
        step, opt_state = 0, None
        if args.resume and os.path.exists(latest):  # refuse a checkpoint of another base model before anything else
            hypernet, cfg, _, opt_state, step = load_checkpoint(out, with_optimizer=True, expect_meta=meta)
            if cfg.size != args.size:
                raise ValueError(f"{out} holds a '{cfg.size}' hypernetwork, not '{args.size}': pass --size {cfg.size}")
            hypernet = hypernet.to(args.device).train()
        elif args.resume:
            log(f"no checkpoint in {out} yet: starting from scratch")
        tok = Tokenizer(args.model)
        splits = load_splits(args.data)
        tasks = load_tasks(tok, args.data, splits["train"], args.max_len, args.descriptions_per_task)
        val_tasks = load_tasks(tok, args.data, splits["heldout"], args.max_len, 0)
        if not tasks:
            raise ValueError(f"none of the {len(splits['train'])} training tasks is in {args.data}/sni (run: python prepare.py)")
        names = sorted(tasks)
        log(f"training tasks: {len(names)} of the {len(splits['train'])} in the paper's split are present; "
            f"{sum(len(t[0]) for t in tasks.values())} examples; held-out tasks: {len(val_tasks)}")

        # descriptions are embedded before the first step (the encoder never runs in the training step), once per
        # base model and dtype: a cache shared by every run. And only those this run's steps will draw:
        # sample_batch is a function of the seed alone, so the (task, description) pairs are known up front.
        t0 = time.time()
        used = sorted({d for s in range(step, args.steps) for _, d in sample_batch(
            tasks, names, args.tasks_per_batch, args.examples_per_task, args.seed * 1_000_003 + s)})  # [(task, j)]
        eval_descs = load_eval_descriptions(args.data)["eval_descriptions"]  # {task: [3 held-out descriptions]}
        val_descs = {name: eval_descs.get(name) or load_descriptions(args.data, name)[:3] for name in val_tasks}
        todo = [tasks[name][1][j] for name, j in used] + [d for ds in val_descs.values() for d in ds]
        folder = cache_folder(args.embedding_cache, args.model, args.dtype)
        cache = EmbeddingCache(partial(embed_descriptions, model, tok, batch_size=64), folder, tag=ENCODER)
        if ddp and not master:  # rank 0 embeds, the others then read its shards
            torch.distributed.barrier()
        n_new = cache.fill(todo, log=log)
        if ddp and master:
            torch.distributed.barrier()
        desc_emb = {}  # {task: {description index: (dim,)}}, indexed as desc_emb[task][j]
        for (name, j), e in zip(used, cache([tasks[name][1][j] for name, j in used])):
            desc_emb.setdefault(name, {})[j] = e
        val = []  # fixed validation set: first examples of each held-out task, each with a held-out description
        for name, (examples, _) in sorted(val_tasks.items()):
            e = cache(val_descs[name])
            val += [(ex, e[i % len(e)]) for i, ex in enumerate(examples[:args.val_examples])]
        log(f"descriptions: {len(set(todo))} needed by steps {step}-{args.steps} and validation, {n_new} embedded, "
            f"the rest from the cache {folder}, {time.time() - t0:.0f}s")
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)

    if args.compile:
        why = compile_model(model, args.device)
        log(f"warning: --compile: {why}; running uncompiled" if why else "compiling the base model (the first steps are slow)")
    for layer in model.model.layers:  # the base model has no dropout of its own; LoRA's input dropout is all
        layer.self_attn.q_proj.dropout = layer.self_attn.v_proj.dropout = args.dropout
    if step:
        log(f"resumed from {out} at step {step}")
    else:
        cfg = HyperConfig(size=args.size, emb_dim=model.config.dim, n_layers=model.config.n_layers,
                          modules={k: tuple(v) for k, v in model.lora_shapes().items()}, latent=args.latent,
                          dropout=args.dropout)
        torch.manual_seed(args.seed)
        hypernet = HyperNetwork(cfg).to(args.device)
    raw = hypernet
    if ddp:
        hypernet = torch.nn.parallel.DistributedDataParallel(hypernet)
    opt = torch.optim.AdamW(raw.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    if opt_state is not None:
        opt.load_state_dict(opt_state)
    log(f"hypernetwork {args.size}: {sum(p.numel() for p in raw.parameters()) / 1e6:.2f}M parameters")
    cuda = args.device.startswith("cuda")
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()
    run_cfg = {**vars(args), "out": out}

    @torch.no_grad()
    def validate():
        if not val:
            return None
        hypernet.eval()
        model.eval()
        losses = []
        for b in range(0, len(val), 8):
            chunk = val[b:b + 8]
            ids, mask, target = make_batch([ex for ex, _ in chunk], tok.pad_id, args.device)
            emb = torch.stack([e for _, e in chunk]).to(args.device)
            with ctx:
                ce, _ = t2l_loss(model, raw, emb, ids, mask, target, label_smoothing=0.0, reg=0.0)
            losses.append(ce.item() * len(chunk))
        hypernet.train()
        model.train()  # frozen weights; train mode only switches LoRA input dropout on
        return sum(losses) / len(val)

    def stop(what):
        kept = f"the last good checkpoint (step {saved}) in {out} is kept" if saved is not None else "nothing was saved"
        print(f"error: {what} at step {step}; stopping: {kept} (try a lower --lr)", file=sys.stderr)
        sys.exit(1)

    def checkpoint(train_loss):
        v = validate()
        if v is not None and not math.isfinite(v):
            stop(f"validation loss is {v}")
        log(f"step {step} | val loss {v if v is None else round(v, 4)}")
        save_checkpoint(out, raw, cfg, meta, optimizer_state=opt.state_dict(), step=step, run_config=run_cfg)
        with open(os.path.join(out, "log.jsonl"), "a") as f:
            f.write(json.dumps({"step": step, "val_loss": v, "train_loss": train_loss}) + "\n")
        plot.loss_plot(out)  # run_dir/loss.svg, redrawn from log.jsonl
        return step

    saved = step if step else None
    if step == 0 and master:  # the initial network is a good checkpoint too (at init it is the base model for L)
        saved = checkpoint(None)
    hypernet.train()
    model.train()
    t_last, tokens = time.time(), torch.zeros(())
    t_start, step_start = t_last, step  # for the ETA: mean step time so far, checkpoints included
    while step < args.steps:
        batch = sample_batch(tasks, names, args.tasks_per_batch, args.examples_per_task, args.seed * 1_000_003 + step)
        batch = batch[rank::world]  # each process takes its share of the global batch
        torch.manual_seed(args.seed * 1_000_003 + step * world + rank)  # dropout and NEFTune noise, resumable
        emb = torch.stack([desc_emb[name][j] for _, (name, j) in batch]).to(args.device)
        lr = lr_at(step, args.steps, args.lr, args.warmup)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        ce, loss, _ = t2l_step(model, hypernet, emb, [ex for ex, _ in batch], tok.pad_id, args.device,
                               args.micro_tokens, ctx, args.label_smoothing, args.reg, args.neftune)
        bad = (~torch.isfinite(loss.detach())).float()
        if ddp:  # every process stops together, none is left waiting in an all-reduce
            torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
        if bad.item():
            stop(f"loss is {loss.item()}")
        gnorm = torch.nn.utils.clip_grad_norm_(raw.parameters(), 1.0)
        opt.step()
        step += 1
        tokens += sum(len(ids) for (ids, _), _ in batch)  # real tokens, padding not counted
        if step % args.log_every == 0 or step == args.steps:
            stats = torch.stack([ce.detach().float().cpu(), tokens.float()]).to(args.device)
            if ddp:  # mean loss and total tokens over all processes
                torch.distributed.all_reduce(stats)
                stats[0] /= world
            dt = time.time() - t_last
            loss_avg, n_tokens = stats.tolist()
            log(f"step {step} | loss {loss_avg:.4f} | lr {lr:.2e} | grad norm {gnorm.item():.3f} | "
                f"{n_tokens / dt:.0f} tok/s | {time.time() - t0:.0f}s | "
                f"eta {(time.time() - t_start) / (step - step_start) * (args.steps - step) / 60:.1f} min")
            t_last, tokens = time.time(), torch.zeros(())
        if step % args.eval_every == 0 or step == args.steps:
            if master:
                saved = checkpoint(round(ce.item(), 4))
            if ddp:
                torch.distributed.barrier()
    if ddp:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback (checkpoints are written atomically)
        print("error: interrupted (training stopped: the last checkpoint is kept; rerun with --resume to continue)", file=sys.stderr)
        sys.exit(130)

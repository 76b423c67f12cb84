"""
Train with one of three recipes (recipes.py: what each trains, its batches and its loss), one loop (train() below)
for all:

  SFT (default)    Text-to-LoRA by supervised fine-tuning (T2L_NOTES section 5): every example carries the adapter
                   generated from one of its task's descriptions; the frozen base model's next-token loss on the
                   response trains only the hypernetwork.
                       description -> embedding (base model, cached) -> hypernetwork -> A, B per layer -> base model -> loss
  --lora           one plain LoRA through the frozen base model: a per-task "oracle" (early stopping on the last 10%
                   of the task), a library of them (--library), or the multi-task baseline (--tasks sni).
  --recon LIBRARY  Text-to-LoRA by reconstruction (section 6): the hypernetwork learns to output each library adapter
                   from its task's descriptions (L1 on z-scored A and B; no base-model forward).

    python train.py --size small                       # CPU defaults, default base model
    python train.py --size large --steps 2000 --out runs/t2l-large --resume
    python train.py --lora --tasks arc_easy --steps 400 --out runs/lora-arc_easy
    python train.py --lora --tasks arc_easy,piqa,sni:32 --steps 400 --library runs/library
    python train.py --recon runs/library --exclude arc_easy --out runs/recon-no-arc_easy
    torchrun --nproc_per_node 2 train.py --size small  # data parallel (gloo on CPU, nccl on GPU)
"""
import argparse
import json
import math
import os
import sys
import time
from contextlib import nullcontext

import torch

import plot
from data import TRAIN_TASKS, Parser, Tokenizer, task_names
from lora import set_adapters
from model import Transformer, compile_model
from recipes import SFT, LoRA, Recon, adapter_complete
from t2l import base_model_meta

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


# --------------------------------------------------------------------------------------------
# one loop for every recipe: learning-rate schedule, clipping, data parallel, logging, checkpoints, early stopping

def positive(s):
    v = int(s)
    if v <= 0:
        raise ValueError(s)
    return v


def lr_at(step, steps, lr, warmup):
    w = max(1, int(warmup * steps))
    return lr * (step + 1) / w if step < w else lr * max(0.0, (steps - step) / max(1, steps - w))


def train(recipe, args, out, log, rank=0, world=1):
    """Train recipe.params to args.steps (or until early stopping); resumable at every checkpoint. -> progress"""
    master, ddp = rank == 0, world > 1
    step, progress = recipe.step, {"best_val": None, "best_step": None, "bad_evals": 0, "finished": False,
                                   **recipe.progress}
    if progress["finished"]:
        log(f"{out}: finished already at step {step} (best validation loss {progress['best_val']} at step "
            f"{progress['best_step']})")
        return progress
    opt = torch.optim.AdamW(recipe.params, lr=args.lr, weight_decay=args.weight_decay)
    if recipe.opt_state is not None:
        opt.load_state_dict(recipe.opt_state)
    cuda = args.device.startswith("cuda")
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()
    run_cfg = {**vars(args), "out": out}

    def stop(what):
        kept = f"the last good checkpoint (step {saved}) in {out} is kept" if saved is not None else "nothing was saved"
        print(f"error: {what} at step {step}; stopping: {kept} (try a lower --lr)", file=sys.stderr)
        sys.exit(1)

    def checkpoint(train_loss):
        v = recipe.validate(ctx)
        if v is not None and not math.isfinite(v):
            stop(f"validation loss is {v}")
        if v is not None and (progress["best_val"] is None or v < progress["best_val"]):
            progress.update(best_val=v, best_step=step, bad_evals=0)
            recipe.export(out)
        elif v is not None:
            progress["bad_evals"] += 1
        early = args.patience and progress["bad_evals"] >= args.patience
        progress["finished"] = bool(step >= args.steps or early)
        log(f"step {step} | val loss {v if v is None else round(v, 4)}" + (
            f" | no better than step {progress['best_step']} for {progress['bad_evals']} evaluations: stopping early"
            if early else ""))
        recipe.save(out, opt.state_dict(), step, run_cfg, progress)
        with open(os.path.join(out, "log.jsonl"), "a") as f:
            f.write(json.dumps({"step": step, "val_loss": v, "train_loss": train_loss}) + "\n")
        plot.loss_plot(out)  # run_dir/loss.svg, redrawn from log.jsonl
        return step

    fresh = recipe.opt_state is None  # nothing saved yet (a run killed after its step-0 checkpoint resumes at 0)
    saved = None if fresh else step
    if fresh and master:  # the initial state is a checkpoint too (for SFT and plain LoRA: the base model)
        saved = checkpoint(None)
    t0 = t_last = time.time()
    tokens, step_start = 0, step  # for tok/s and the ETA (mean step time so far, checkpoints included)
    while step < args.steps and not progress["finished"]:
        batch = recipe.sample(step)[rank::world]  # each process takes its share of the global batch
        torch.manual_seed(args.seed * 1_000_003 + step * world + rank)  # dropout and NEFTune noise, resumable
        lr = lr_at(step, args.steps, args.lr, args.warmup)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        ce, loss = recipe.loss(batch, ctx)
        bad = (~torch.isfinite(loss.detach())).float().reshape(1).to(args.device)
        if ddp:  # every process stops together, none is left waiting in an all-reduce
            torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
        if bad.item():
            stop(f"loss is {loss.item()}")
        if ddp:  # the mean gradient over processes: each one's loss is the mean over its equal share
            for p in recipe.params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                torch.distributed.all_reduce(p.grad)
                p.grad /= world
        gnorm = torch.nn.utils.clip_grad_norm_(recipe.params, 1.0)
        opt.step()
        step += 1
        tokens += recipe.tokens(batch)
        if step % args.log_every == 0 or step == args.steps:
            stats = torch.tensor([ce.detach().float().item(), float(tokens)], device=args.device)
            if ddp:  # mean loss and total tokens over all processes
                torch.distributed.all_reduce(stats)
                stats[0] /= world
            dt, (loss_avg, n_tokens) = time.time() - t_last, stats.tolist()
            log(f"step {step} | loss {loss_avg:.4f} | lr {lr:.2e} | grad norm {gnorm.item():.3f} | "
                + (f"{n_tokens / dt:.0f} tok/s | " if n_tokens else "") + f"{time.time() - t0:.0f}s | "
                f"eta {(time.time() - t0) / (step - step_start) * (args.steps - step) / 60:.1f} min")
            t_last, tokens = time.time(), 0
        if step % args.eval_every == 0 or step == args.steps:
            if master:
                saved = checkpoint(round(ce.item(), 4))
            if ddp:  # rank 0 decided on early stopping: everyone follows
                flag = torch.tensor([float(progress["finished"])], device=args.device)
                torch.distributed.broadcast(flag, 0)
                progress["finished"] = bool(flag.item())
    return progress


# --------------------------------------------------------------------------------------------

DEFAULTS = {"sft": {"lr": 1e-4, "patience": 0}, "lora": {"lr": 2e-4, "patience": 3}, "recon": {"lr": 1e-3, "patience": 0}}


def parse_args(argv=None):
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=("large", "medium", "small"), default="small")
    p.add_argument("--lora", action="store_true", help="train one plain LoRA on --tasks (into --out) or one per task "
                                                       "(into --library) instead of a hypernetwork")
    p.add_argument("--tasks", default=None, help="with --lora: comma list of benchmarks with a training split "
                   f"({', '.join(TRAIN_TASKS)}) and SNI task names; 'sni' = every SNI training task, 'sni:N' the first N "
                   "(by name); SFT: SNI tasks only (default: all), e.g. sni:64 for the number-of-tasks ablation")
    p.add_argument("--library", default=None, help="with --lora: build a library, one adapter per task in DIR/<task>; "
                                                   "complete adapters are skipped, unfinished ones resumed")
    p.add_argument("--recon", default=None, metavar="LIBRARY", help="train the hypernetwork to reconstruct the "
                                                                    "adapters of a library folder")
    p.add_argument("--exclude", default="", help="with --recon: comma list of library tasks to leave out")
    p.add_argument("--scoring", choices=("cloze", "mc"), default=None,
                   help="with --lora: how benchmark examples are rendered (default cloze; mc: the paper's letter prompt)")
    p.add_argument("--steps", type=positive, default=1000)
    p.add_argument("--tasks-per-batch", type=positive, default=8, help="n tasks per step (paper: 8)")
    p.add_argument("--examples-per-task", type=positive, default=1, help="k examples of each (paper: 1)")
    p.add_argument("--lr", type=float, default=None, help="default: " + ", ".join(
        f"{m} {d['lr']:g}" for m, d in DEFAULTS.items()) + " (paper SFT: 2.5e-5 for 1.18M steps; short runs need more)")
    p.add_argument("--warmup", type=float, default=0.1, help="fraction of steps of linear warmup")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--patience", type=int, default=None, help="stop after N evaluations without a better validation "
                                                              "loss (default: 3 with --lora, else never)")
    p.add_argument("--max-len", type=positive, default=256, help="tokens per example (paper: 512)")
    p.add_argument("--micro-tokens", type=positive, default=1024,
                   help="padded tokens per micro-batch (examples grouped by length; the step's result does not depend "
                        "on it; a GPU wants the whole batch: tasks x examples x max-len)")
    p.add_argument("--descriptions-per-task", type=positive, default=128, help="first N generated descriptions (paper: 128)")
    p.add_argument("--neftune", type=float, default=5.0)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--reg", type=float, default=1e-3, help="weight of the L2 on generated A and B (SFT)")
    p.add_argument("--latent", type=int, default=128)
    p.add_argument("--dropout", type=float, default=0.05, help="hypernetwork dropout and LoRA input dropout (paper: 0.05)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="bf16", help="base model weights (what trains stays fp32)")
    p.add_argument("--model", default="assets/models/SmolLM2-135M-Instruct")
    p.add_argument("--data", default="assets/data")
    p.add_argument("--embedding-cache", default=os.environ.get("T2L_EMBEDDING_CACHE", "assets/cache/embeddings"),
                   help="description embeddings shared by every run, one folder per base model and dtype "
                        "(default $T2L_EMBEDDING_CACHE or assets/cache/embeddings)")
    p.add_argument("--out", default=None, help="run folder (default runs/t2l-<size>, runs/recon-<size>; --lora: the "
                                               "adapter folder, required)")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the base model (needs g++ on CPU, triton on CUDA)")
    p.add_argument("--log-every", type=positive, default=10)
    p.add_argument("--eval-every", type=positive, default=100)
    p.add_argument("--val-examples", type=positive, default=None,
                   help="validation examples per task (default: 8 per held-out SNI task; --lora on named tasks: up to "
                        "200 of each task's last 10%%)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.mode = "recon" if args.recon else "lora" if args.lora else "sft"
    args.exclude = [t for t in args.exclude.split(",") if t.strip()]
    for key, value in DEFAULTS[args.mode].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    wrong = [(args.recon and args.lora, "--recon and --lora are two different recipes: pass one"),
             (args.lora and not args.tasks, "--lora needs --tasks (e.g. --tasks arc_easy, or sni)"),
             (args.lora and not (args.out or args.library), "--lora needs --out DIR (the adapter) or --library DIR"),
             (args.lora and args.out and args.library, "pass --out (one adapter) or --library (one per task), not both"),
             (args.recon and args.tasks, "--recon trains on the tasks of its library (leave some out with --exclude)"),
             (not args.lora and (args.library or args.scoring), "--library and --scoring go with --lora"),
             (args.exclude and not args.recon, "--exclude goes with --recon")]
    for bad, why in wrong:
        if bad:
            p.error(why)
    args.out = args.out or args.library or f"runs/{'recon' if args.recon else 't2l'}-{args.size}"
    return args


def main(argv=None):
    args = parse_args(argv)
    ddp = "RANK" in os.environ
    rank, world = 0, 1
    if ddp:
        torch.distributed.init_process_group("nccl" if args.device.startswith("cuda") else "gloo")
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        if args.device.startswith("cuda"):
            args.device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
            torch.cuda.set_device(args.device)
    log = (lambda *a: print(*a, flush=True)) if rank == 0 else (lambda *a: None)
    try:
        if os.path.exists(os.path.join(args.out, "latest")) and not args.resume and not args.library:
            raise ValueError(f"{args.out} already holds a run: pass --resume to continue it, or another --out")
        if (args.tasks_per_batch * args.examples_per_task) % world:
            raise ValueError(f"the global batch ({args.tasks_per_batch} x {args.examples_per_task}) must split evenly "
                             f"over {world} processes")
        names = task_names(args.tasks, args.data) if args.lora else None
        model = Transformer.from_pretrained(args.model, device=args.device, dtype=DTYPES[args.dtype])
        model.requires_grad_(False)
        meta = base_model_meta(model, os.path.abspath(args.model))
        tok = Tokenizer(args.model)
        for layer in model.model.layers:  # the base model has no dropout of its own; LoRA's input dropout is all
            layer.self_attn.q_proj.dropout = layer.self_attn.v_proj.dropout = args.dropout
        if args.compile:
            why = compile_model(model, args.device)
            log(f"warning: --compile: {why}; running uncompiled" if why else "compiling the base model (the first steps are slow)")
        if args.library:
            return build_library(args, model, tok, meta, names, log)
        t0 = time.time()
        recipe = (Recon(args, model, tok, meta, args.out, log) if args.recon else
                  LoRA(args, model, tok, meta, args.out, log, names) if args.lora else
                  SFT(args, model, tok, meta, args.out, log))
        log(f"set up in {time.time() - t0:.0f}s" + (f"; resumed from {args.out} at step {recipe.step}" if recipe.step else ""))
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    model.train()  # frozen weights; train mode only switches LoRA input dropout on
    progress = train(recipe, args, args.out, log, rank, world)
    if args.recon and rank == 0:
        write_errors(recipe, args.out, log)
    if args.lora and rank == 0:
        log(f"adapter (best validation loss {progress['best_val']:.4f} at step {progress['best_step']}) in {args.out}")
    if ddp:
        torch.distributed.destroy_process_group()


def write_errors(recipe, out, log):
    errors = recipe.errors()
    with open(os.path.join(out, "recon_errors.json"), "w") as f:
        json.dump(errors, f, indent=2)
    mean = {k: sum(e[k] for e in errors.values()) / len(errors) for k in ("A", "B", "dW")}
    log(f"reconstruction error (relative, mean over {len(errors)} tasks, first 3 training descriptions): "
        f"A {mean['A']:.3f}, B {mean['B']:.3f}, delta W {mean['dW']:.3f}; per task in {out}/recon_errors.json")


def build_library(args, model, tok, meta, names, log):
    """One LoRA per task into args.library/<task>, each from the same initial adapter; complete ones are skipped
    and an interrupted one resumes, so a killed build goes on where it stopped. Times go to build.jsonl."""
    os.makedirs(args.library, exist_ok=True)
    for i, name in enumerate(names):
        out = os.path.join(args.library, name)
        if adapter_complete(out):
            log(f"[{i + 1}/{len(names)}] {name}: complete, skipped")
            continue
        t0 = time.time()
        task_args = argparse.Namespace(**{**vars(args), "resume": True, "out": out})
        recipe = LoRA(task_args, model, tok, meta, out, log, [name])
        log(f"[{i + 1}/{len(names)}] {name}" + (f": resumed at step {recipe.step}" if recipe.step else ""))
        model.train()
        progress = train(recipe, task_args, out, log)
        seconds = time.time() - t0
        log(f"[{i + 1}/{len(names)}] {name}: best validation loss {progress['best_val']:.4f} at step "
            f"{progress['best_step']}, {seconds:.0f}s")
        with open(os.path.join(args.library, "build.jsonl"), "a") as f:
            f.write(json.dumps({"task": name, "seconds": round(seconds, 1), "steps": args.steps, "lr": args.lr,
                                "resumed_at": recipe.step, **progress}) + "\n")
    set_adapters(model, None)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback (checkpoints are written atomically)
        print("error: interrupted (training stopped: the last checkpoint is kept; rerun with --resume to continue)", file=sys.stderr)
        sys.exit(130)

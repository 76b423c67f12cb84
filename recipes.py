"""
What each recipe trains and how its loss is computed; train.py's loop runs any of them.

  losses     make_batch -> response_ce (the base model's next-token loss on response tokens, NEFTune), t2l_loss
             (one padded batch: the reference) and t2l_step (the same gradients in length-grouped micro-batches),
             accumulate (the micro-batch forward/backward both share), recon_l1, mean_ce (validation)
  recipes    SFT, LoRA, Recon: each holds its trainable params and says how a step's batch is drawn (sample), what
             its loss is (loss: forward and backward), how many real tokens a batch holds (tokens), how it is
             validated, saved and exported
"""
import os
import random
import time
from functools import partial

import torch
import torch.nn.functional as F

from data import (TRAIN_TASKS, benchmark_examples, load_descriptions, load_eval_descriptions, load_splits, load_tasks,
                  sni_examples, task_names)
from lora import ALPHA, R, TARGETS, library_stats, load_library, save_adapter
from embed_cache import EmbeddingCache, cache_folder
from t2l import (ENCODER, HyperConfig, HyperNetwork, embed_descriptions, load_checkpoint, load_state, save_checkpoint,
                 save_state, saved_run)


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


def recon_l1(hypernet, emb, targets):
    """Reconstruction (T2L_NOTES section 6): L1 between the hypernetwork's z-scores and the library adapters'
    z-scored A and B, each tensor kind weighted equally. targets: {module: (zA (n, L, r, d_in), zB (n, L, d_out, r))}"""
    z = hypernet(emb, normalized=True)
    return sum(F.l1_loss(z[k][0], A) + F.l1_loss(z[k][1], B) for k, (A, B) in targets.items()) / (2 * len(targets))


@torch.no_grad()
def mean_ce(model, examples, pad_id, device, budget, ctx):
    """Mean response cross-entropy (no smoothing, no noise) over examples, in length-grouped micro-batches."""
    total = 0.0
    for g in micro_batches([len(ids) for ids, _ in examples], budget):
        ids, mask, target = make_batch([examples[i] for i in g], pad_id, device)
        with ctx:
            total += response_ce(model, ids, mask, target, label_smoothing=0.0).sum().item()
    return total / len(examples)


def sample_batch(tasks, names, n_tasks, k, seed):
    """n tasks x k examples, each with one of its task's descriptions (None for a task without); a function of the
    seed alone, so a resumed run sees exactly the batches it would have seen. Fewer tasks than n (a single-task
    LoRA): the batch's n x k examples are spread over them."""
    rng = random.Random(seed)
    if len(names) >= n_tasks:
        chosen = [(name, k) for name in rng.sample(names, n_tasks)]
    else:
        q, extra = divmod(n_tasks * k, len(names))
        chosen = [(name, q + (i < extra)) for i, name in enumerate(names)]
    batch = []
    for name, m in chosen:
        examples, descs = tasks[name]
        for ex in rng.sample(examples, min(m, len(examples))):
            batch.append((ex, (name, rng.randrange(len(descs))) if descs else None))
    return batch


def embedding_cache(args, model, tok, texts, log, first_step):
    """Description embeddings (the encoder never runs in a training step), computed once per base model and dtype
    into a cache shared by every run; under DDP rank 0 embeds and the others read its shards."""
    folder = cache_folder(args.embedding_cache, args.model, args.dtype)
    cache = EmbeddingCache(partial(embed_descriptions, model, tok, batch_size=64), folder, tag=ENCODER)
    ddp = torch.distributed.is_available() and torch.distributed.is_initialized()
    master = not ddp or torch.distributed.get_rank() == 0
    if ddp and not master:
        torch.distributed.barrier()
    t0 = time.time()
    n_new = cache.fill(texts, log=log)
    if ddp and master:
        torch.distributed.barrier()
    log(f"descriptions: {len(set(texts))} needed by steps {first_step}-{args.steps} and validation, {n_new} embedded, "
        f"the rest from the cache {folder}, {time.time() - t0:.0f}s")
    return cache


# --------------------------------------------------------------------------------------------
# the three recipes. Each holds what it trains (params) and says how a step's batch is drawn (sample), what its
# loss is (loss: forward and backward), how it is validated and saved; train.train() is the one loop for all.

def check_meta(saved, meta, where):
    keys = ("n_layers", "dim", "vocab_size", "lora_shapes")
    bad = [k for k in keys if saved.get(k) != meta.get(k)]
    if bad:
        raise ValueError(f"{where} was trained on base model '{saved.get('base_model', '?')}' ({bad[0]}="
                         f"{saved.get(bad[0])}), not '{meta['base_model']}' ({bad[0]}={meta.get(bad[0])}): pass that model")


def new_hypernet(args, model, zscore=False):
    cfg = HyperConfig(size=args.size, emb_dim=model.config.dim, n_layers=model.config.n_layers,
                      modules={k: tuple(v) for k, v in model.lora_shapes().items()}, latent=args.latent,
                      dropout=args.dropout, zscore=zscore)
    torch.manual_seed(args.seed)
    return HyperNetwork(cfg), cfg


class ExampleBatches:
    """What SFT and plain LoRA share: a step's batch is n tasks x k examples (each with one of its task's
    descriptions), and its real tokens (padding not counted) are what the log's tok/s counts."""

    def sample(self, step):
        a = self.args
        return sample_batch(self.tasks, self.names, a.tasks_per_batch, a.examples_per_task, a.seed * 1_000_003 + step)

    def tokens(self, batch):
        return sum(len(ids) for (ids, _), _ in batch)


class SFT(ExampleBatches):
    """Text-to-LoRA by supervised fine-tuning (T2L_NOTES section 5): every example wears the adapter generated
    from one of its task's descriptions; the base model's loss on the response trains the hypernetwork."""

    def __init__(self, args, model, tok, meta, out, log):
        self.args, self.model, self.tok, self.meta = args, model, tok, meta
        self.step, self.opt_state, self.progress = 0, None, {}
        if args.resume and os.path.exists(os.path.join(out, "latest")):  # another base model is refused first
            self.net, self.cfg, _, self.opt_state, self.step, self.progress = load_checkpoint(
                out, with_optimizer=True, expect_meta=meta)
            if self.cfg.zscore:
                raise ValueError(f"{out} holds a reconstruction run: resume it with --recon LIBRARY")
            if self.cfg.size != args.size:
                raise ValueError(f"{out} holds a '{self.cfg.size}' hypernetwork, not '{args.size}': pass --size {self.cfg.size}")
            saved_tasks = saved_run(out).get("tasks")
            if saved_tasks != args.tasks:
                raise ValueError(f"{out} trains on --tasks {saved_tasks or 'sni (all)'}, not {args.tasks or 'sni (all)'}")
        splits = load_splits(args.data)
        names = task_names(args.tasks, args.data) if args.tasks else splits["train"]  # --tasks sni:N: the first N
        if any(n in TRAIN_TASKS for n in names):
            raise ValueError("SFT trains on SNI tasks (--tasks sni, sni:N or SNI task names); the benchmarks' training "
                             "splits go with --lora")
        self.tasks = load_tasks(tok, args.data, names, args.max_len, args.descriptions_per_task)
        val_tasks = load_tasks(tok, args.data, splits["heldout"], args.max_len, 0)
        if not self.tasks:
            raise ValueError(f"none of the {len(splits['train'])} training tasks is in {args.data}/sni (run: python prepare.py)")
        self.names = sorted(self.tasks)
        log(f"training tasks: {len(self.names)} of the {len(splits['train'])} in the paper's split"
            + (f" (--tasks {args.tasks})" if args.tasks else " are present") + "; "
            f"{sum(len(t[0]) for t in self.tasks.values())} examples; held-out tasks: {len(val_tasks)}")
        # only the (task, description) pairs this run's steps draw are embedded: sample_batch is a function of
        # the seed alone, so they are known up front
        used = sorted({d for s in range(self.step, args.steps) for _, d in self.sample(s)})  # [(task, j)]
        eval_descs = load_eval_descriptions(args.data)["eval_descriptions"]  # {task: [3 held-out descriptions]}
        val_descs = {name: eval_descs.get(name) or load_descriptions(args.data, name)[:3] for name in val_tasks}
        cache = embedding_cache(args, model, tok, [self.tasks[n][1][j] for n, j in used]
                                + [d for ds in val_descs.values() for d in ds], log, self.step)
        self.emb = {}  # {task: {description index: (dim,)}}
        for (name, j), e in zip(used, cache([self.tasks[name][1][j] for name, j in used])):
            self.emb.setdefault(name, {})[j] = e
        self.val = []  # fixed: the first examples of each held-out task, each with one of its held-out descriptions
        for name, (examples, _) in sorted(val_tasks.items()):
            e = cache(val_descs[name])
            self.val += [(ex, e[i % len(e)]) for i, ex in enumerate(examples[:args.val_examples or 8])]
        if not self.step:
            self.net, self.cfg = new_hypernet(args, model)
        self.net = self.net.to(args.device).train()
        self.params = list(self.net.parameters())
        log(f"hypernetwork {args.size}: {sum(p.numel() for p in self.params) / 1e6:.2f}M parameters")

    def loss(self, batch, ctx):
        a = self.args
        emb = torch.stack([self.emb[name][j] for _, (name, j) in batch]).to(a.device)
        ce, loss, _ = t2l_step(self.model, self.net, emb, [ex for ex, _ in batch], self.tok.pad_id, a.device,
                               a.micro_tokens, ctx, a.label_smoothing, a.reg, a.neftune)
        return ce, loss

    @torch.no_grad()
    def validate(self, ctx):
        if not self.val:
            return None
        self.net.eval()
        self.model.eval()  # no dropout, in the hypernetwork or on the LoRA inputs
        total = 0.0
        for b in range(0, len(self.val), 8):
            chunk = self.val[b:b + 8]
            ids, mask, target = make_batch([ex for ex, _ in chunk], self.tok.pad_id, self.args.device)
            emb = torch.stack([e for _, e in chunk]).to(self.args.device)
            with ctx:
                ce, _ = t2l_loss(self.model, self.net, emb, ids, mask, target, label_smoothing=0.0, reg=0.0)
            total += ce.item() * len(chunk)
        self.net.train()
        self.model.train()
        return total / len(self.val)

    def save(self, out, opt_state, step, run_config, progress):
        save_checkpoint(out, self.net, self.cfg, self.meta, opt_state, step, run_config, progress)

    def export(self, out):  # the checkpoint is the product
        pass


class LoRA(ExampleBatches):
    """One static LoRA (the paper's: r 8, alpha 16, rsLoRA, q_proj and v_proj) trained through the frozen base
    model on the examples of one or more tasks; the adapter with the best validation loss is written to the run
    folder in PEFT format. `--tasks sni` is the multi-task LoRA baseline: SFT's data, sampler and validation set."""
    weights = "lora.safetensors"

    def __init__(self, args, model, tok, meta, out, log, names):
        self.args, self.model, self.tok, self.meta, self.names = args, model, tok, meta, names
        self.step, self.opt_state, self.progress = 0, None, {}
        torch.manual_seed(args.seed)  # the same initial A for every adapter of a library: their A's start aligned
        self.modules = [getattr(layer.self_attn, t) for layer in model.model.layers for t in TARGETS]
        for mod in self.modules:
            mod.add_adapter(R, ALPHA, rslora=True)
        self.params = [p for mod in self.modules for p in (mod.lora_A, mod.lora_B)]
        if args.resume and os.path.exists(os.path.join(out, "latest")):
            def check(config):
                check_meta(config["meta"], meta, out)
                if config["tasks"] != names:
                    raise ValueError(f"{out} trains on {','.join(config['tasks'])}, not {','.join(names)}")
            config, state, self.opt_state = load_state(out, self.weights, check=check)
            with torch.no_grad():
                for i, p in enumerate(self.params):
                    p.copy_(state[f"p{i}"])
            self.step, self.progress = config["step"] or 0, config.get("progress") or {}
        self.tasks, self.val = {}, []
        if args.tasks == "sni" and not args.library:  # the multi-task baseline: all of every SNI training task,
            # validated like SFT (the held-out SNI tasks)
            for name in names:
                self.tasks[name] = (sni_examples(tok, args.data, name, args.max_len), [])
            for name, (examples, _) in sorted(load_tasks(tok, args.data, load_splits(args.data)["heldout"],
                                                         args.max_len, 0).items()):
                self.val += examples[:args.val_examples or 8]
            held = "the held-out SNI tasks' first examples"
        else:  # the last 10% of each task's training data is its validation set (the paper's oracles)
            for name in names:
                ex = (benchmark_examples(tok, args.data, name, args.max_len, args.scoring or "cloze")
                      if name in TRAIN_TASKS else sni_examples(tok, args.data, name, args.max_len))
                if len(ex) < 2:
                    raise ValueError(f"task {name} has {len(ex)} example(s): too few to hold out a validation part")
                n_val = max(1, len(ex) // 10)
                self.tasks[name] = (ex[:-n_val], [])
                self.val += ex[-n_val:][:args.val_examples or 200]
            held = "the last 10% of each task"
        log(f"LoRA r={R} alpha={ALPHA} on {','.join(TARGETS)} ({sum(p.numel() for p in self.params) / 1e6:.2f}M "
            f"parameters); {len(names)} task(s), {sum(len(t[0]) for t in self.tasks.values())} training examples; "
            f"validation: {len(self.val)} examples ({held})")

    def loss(self, batch, ctx):
        a = self.args
        ce, _ = accumulate(self.model, [ex for ex, _ in batch], self.tok.pad_id, a.device, a.micro_tokens, ctx,
                           None, a.label_smoothing, a.neftune)
        return ce, ce

    def validate(self, ctx):
        self.model.eval()
        v = mean_ce(self.model, self.val, self.tok.pad_id, self.args.device, self.args.micro_tokens, ctx)
        self.model.train()
        return v

    def save(self, out, opt_state, step, run_config, progress):
        config = {"meta": self.meta, "tasks": self.names, "run": run_config, "progress": progress}
        save_state(out, {f"p{i}": p for i, p in enumerate(self.params)}, config, opt_state, step, self.weights)

    def adapters(self):
        L = len(self.model.model.layers)
        return {t: (torch.stack([m.lora_A for m in self.modules[i::len(TARGETS)]]),
                    torch.stack([m.lora_B for m in self.modules[i::len(TARGETS)]])) for i, t in enumerate(TARGETS)
                if len(self.modules[i::len(TARGETS)]) == L}

    def export(self, out):
        save_adapter(out, self.adapters(), R, ALPHA, base_model_name=self.meta["base_model"])


class Recon:
    """Text-to-LoRA by reconstruction (T2L_NOTES section 6): the hypernetwork learns to output each library
    adapter from its task's descriptions. No base-model forward in a step: the loss is L1 on z-scored A and B."""

    def __init__(self, args, model, tok, meta, out, log):
        self.args, self.meta = args, meta
        self.step, self.opt_state, self.progress = 0, None, {}
        library = load_library(args.recon, model.lora_shapes(), model.config.n_layers, exclude=args.exclude)
        for name in library:
            if not adapter_complete(os.path.join(args.recon, name)):
                raise ValueError(f"{os.path.join(args.recon, name)} is still training: finish the library first")
        self.names = sorted(library)
        if args.resume and os.path.exists(os.path.join(out, "latest")):
            self.net, self.cfg, _, self.opt_state, self.step, self.progress = load_checkpoint(
                out, with_optimizer=True, expect_meta=meta)
            if not self.cfg.zscore or self.progress.get("library_tasks") != self.names:
                raise ValueError(f"{out} is not a reconstruction run of this library ({len(self.names)} tasks): "
                                 f"pass the same --recon and --exclude, or another --out")
        eval_descs = load_eval_descriptions(args.data)["eval_descriptions"]
        self.tasks, val_descs = {}, {}
        for name in self.names:
            path = os.path.join(args.data, "tasks", "descriptions", name + ".json")
            if not os.path.isfile(path):
                raise ValueError(f"library task '{name}' has no descriptions ({path}): name library adapters after tasks")
            descs = load_descriptions(args.data, name)
            self.tasks[name] = ([name], descs[:args.descriptions_per_task])
            # held out: the task's 3 evaluation descriptions, else 3 generated ones past the training ones
            val_descs[name] = eval_descs.get(name) or descs[args.descriptions_per_task:][:3]
        stats = library_stats(library)
        self.targets = {name: {k: tuple((x - m) / s for x, (m, s) in zip(library[name][k], stats[k])) for k in stats}
                        for name in self.names}  # {task: {module: (zA, zB)}}
        self.library = library
        used = sorted({d for s in range(self.step, args.steps) for _, d in self.sample(s)})
        cache = embedding_cache(args, model, tok, [self.tasks[n][1][j] for n, j in used]
                                + [d for ds in val_descs.values() for d in ds], log, self.step)
        self.emb = {(n, j): e for (n, j), e in zip(used, cache([self.tasks[n][1][j] for n, j in used]))}
        self.val = [(name, e) for name, ds in val_descs.items() if ds for e in cache(ds)]
        self.train_emb = {name: cache(self.tasks[name][1][:3]) for name in self.names}  # for the error report
        if not self.step:
            self.net, self.cfg = new_hypernet(args, model, zscore=True)
            self.net.set_library_stats(stats)
        self.progress = {**self.progress, "library_tasks": self.names}  # checked when the run resumes
        self.net = self.net.to(args.device).train()
        self.params = list(self.net.parameters())
        log(f"reconstruction of {len(self.names)} adapters in {args.recon}"
            f"{' without ' + ','.join(args.exclude) if args.exclude else ''}; hypernetwork {args.size}: "
            f"{sum(p.numel() for p in self.params) / 1e6:.2f}M parameters; validation: {len(self.val)} held-out descriptions")

    def sample(self, step):
        return sample_batch(self.tasks, self.names, self.args.tasks_per_batch, 1, self.args.seed * 1_000_003 + step)

    def tokens(self, batch):  # a batch of task names: no tokens (and no tok/s in the log)
        return 0

    def batch_targets(self, names):
        return {k: tuple(torch.stack([self.targets[n][k][i] for n in names]).to(self.args.device) for i in range(2))
                for k in self.cfg.modules}

    def loss(self, batch, ctx):
        emb = torch.stack([self.emb[d] for _, d in batch]).to(self.args.device)
        with ctx:
            l1 = recon_l1(self.net, emb, self.batch_targets([name for name, _ in batch]))
        l1.backward()
        return l1.detach(), l1.detach()

    @torch.no_grad()
    def validate(self, ctx):
        if not self.val:
            return None
        self.net.eval()
        emb = torch.stack([e for _, e in self.val]).to(self.args.device)
        with ctx:
            v = recon_l1(self.net, emb, self.batch_targets([name for name, _ in self.val])).item()
        self.net.train()
        return v

    def save(self, out, opt_state, step, run_config, progress):
        save_checkpoint(out, self.net, self.cfg, self.meta, opt_state, step, run_config, progress)

    def export(self, out):
        pass

    @torch.no_grad()
    def errors(self):
        """{task: relative errors of A, B and delta W = B A} of the adapters generated from the task's first 3
        training descriptions (mean over them), against the library adapter; all layers and modules pooled."""
        self.net.eval()
        out = {}
        for name in self.names:
            gen = self.net(self.train_emb[name].to(self.args.device))
            sq = {"A": [0.0, 0.0], "B": [0.0, 0.0], "dW": [0.0, 0.0]}
            for k, (A, B) in self.library[name].items():
                gA, gB = gen[k][0].float().cpu(), gen[k][1].float().cpu()
                for key, g, t in (("A", gA, A), ("B", gB, B), ("dW", gB @ gA, B @ A)):
                    sq[key][0] += (g - t).pow(2).flatten(1).sum(1)  # per description
                    sq[key][1] += t.pow(2).sum()
            out[name] = {key: ((e / n).sqrt().mean().item()) for key, (e, n) in sq.items()}
        self.net.train()
        return out


def adapter_complete(folder):
    """A library member is complete when its run finished (the steps, or early stopping), or when it is an
    adapter from elsewhere (PEFT files, no run of ours in the folder)."""
    if os.path.isfile(os.path.join(folder, "latest")):
        try:
            return bool((load_state(folder, LoRA.weights)[0].get("progress") or {}).get("finished"))
        except (FileNotFoundError, ValueError):
            return False
    return os.path.isfile(os.path.join(folder, "adapter_config.json"))

"""
Text-to-LoRA hypernetwork (Charakorn et al., ICML 2025, arXiv 2506.06105, section 3 / T2L_NOTES 2-4):
a task description is embedded once, and one batched forward pass turns that embedding into the LoRA
A (r x d_in) and B (d_out x r) of every target module of every layer of a frozen base model.

    e -> [task | layer | module] embedding -> mixer -> 2 residual blocks -> output block -> head per module

Also here: description embeddings (the base model's own last-token hidden state; embed_cache.py keeps them
for every run on the same base model and dtype), checkpoint I/O, and a CLI that turns one description into an
adapter, writes it in PEFT format and/or shows what it changes (greedy generations without and with it):

    python t2l.py --ckpt runs/t2l --out out/adapter "Classify the sentiment of a movie review."
    python t2l.py --ckpt runs/t2l "Classify the sentiment of a movie review." --prompt "A dull, overlong film."
"""
import json
import math
import os
import shutil
import sys
import time
import warnings
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

SIZES = ("large", "medium", "small")
MAX_DESC_TOKENS = 512  # longer descriptions are truncated (with a warning)


@dataclass
class HyperConfig:
    size: str  # large | medium | small: what one head call emits (T2L_NOTES section 3)
    emb_dim: int  # description embedding dim d_e
    n_layers: int  # of the base model
    modules: dict  # target module name -> (d_in, d_out); the order fixes the module-embedding index
    r: int = 8
    latent: int = 128  # Lat
    head_in: int = 512  # H
    dropout: float = 0.05
    zscore: bool = False  # reconstruction: the heads emit z-scores, de-normalised by the library's statistics

    def __post_init__(self):
        if self.size not in SIZES:
            raise ValueError(f"hypernetwork size must be one of {SIZES}, got '{self.size}'")
        if self.latent % 4:
            raise ValueError(f"latent must be a multiple of 4 (task Lat/2 + layer Lat/4 + module Lat/4), got {self.latent}")
        self.modules = {k: (int(v[0]), int(v[1])) for k, v in self.modules.items()}  # JSON gives lists

    def to_dict(self):
        return {**asdict(self), "modules": {k: list(v) for k, v in self.modules.items()}}

    @classmethod
    def from_dict(cls, d):
        return cls(**d)


def rank_signal(r, dim, device=None):
    # sinusoidal position code (Vaswani et al. 2017) for the rank index of a small-size pass: no parameters,
    # which keeps S at the paper's 4.99M (a learned Embedding(r, Lat) + LayerNorm would make it 5.00M)
    k = torch.arange(r, dtype=torch.float32, device=device)[:, None]  # (r, 1)
    freq = 10000.0 ** (-torch.arange(0, dim, 2, dtype=torch.float32, device=device) / dim)  # (dim/2,)
    return torch.stack([(k * freq).sin(), (k * freq).cos()], dim=-1).flatten(1)  # (r, dim)


class Head(nn.Module):
    """H -> n_out, one per module type, shared by all layers. bias-HyperInit: the weight starts at zero and
    the bias holds a freshly initialised LoRA, so at step 0 every layer gets that LoRA with B = 0.
    The bias covers A and B for large; for medium and small it covers the A pass only: the initial B is
    zero, so the B pass needs no bias, B starts at exactly 0 and the count stays the paper's."""

    def __init__(self, size, H, r, d_in, d_out):
        super().__init__()
        n_out = {"large": r * (d_in + d_out), "medium": r * max(d_in, d_out), "small": max(d_in, d_out)}[size]
        self.weight = nn.Parameter(torch.zeros(n_out, H))
        A0 = torch.empty(r, d_in)
        nn.init.kaiming_uniform_(A0, a=math.sqrt(5))  # what nn.Linear(d_in, r) does
        bias = {"large": torch.cat([A0.flatten(), torch.zeros(d_out * r)]),  # B0 = 0
                "medium": A0.flatten(),
                "small": A0[0]}[size]  # shared by the r passes, so all rows of A start equal (rank 1)
        self.bias = nn.Parameter(bias)


def ffn(lat, out, p, norm=True, last_dropout=True):
    # the Linear(Lat, 4Lat) -> SiLU -> Dropout -> Linear(4Lat, out) -> SiLU [-> Dropout] unit of every block
    layers = [nn.LayerNorm(lat)] if norm else [nn.Dropout(p)]
    layers += [nn.Linear(lat, 4 * lat), nn.SiLU(), nn.Dropout(p), nn.Linear(4 * lat, out), nn.SiLU()]
    return nn.Sequential(*layers, *([nn.Dropout(p)] if last_dropout else []))


class HyperNetwork(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        Lat, p = cfg.latent, cfg.dropout
        self.task_proj = nn.Linear(cfg.emb_dim, Lat // 2)
        self.task_norm = nn.LayerNorm(Lat // 2)
        self.layer_emb = nn.Embedding(cfg.n_layers, Lat // 4)
        self.layer_norm = nn.LayerNorm(Lat // 4)
        self.module_emb = nn.Embedding(len(cfg.modules), Lat // 4)
        self.module_norm = nn.LayerNorm(Lat // 4)
        self.mixer = ffn(Lat, Lat, p, norm=False)  # Dropout first instead of LayerNorm
        self.blocks = nn.ModuleList(ffn(Lat, Lat, p) for _ in range(2))  # x + f(x)
        self.out = ffn(Lat, cfg.head_in, p, last_dropout=False)
        if cfg.size != "large":  # one pass for A and one for B: tell them apart
            self.ab_emb = nn.Embedding(2, Lat)
            self.ab_norm = nn.LayerNorm(Lat)
        self.heads = nn.ModuleDict({name: Head(cfg.size, cfg.head_in, cfg.r, d_in, d_out)
                                    for name, (d_in, d_out) in cfg.modules.items()})
        if cfg.zscore:  # per-element mean and std of the library's A and B (set_library_stats), saved with the weights
            for name, (d_in, d_out) in cfg.modules.items():
                for ab, shape in (("A", (cfg.n_layers, cfg.r, d_in)), ("B", (cfg.n_layers, d_out, cfg.r))):
                    self.register_buffer(f"{name}_{ab}_mean", torch.zeros(shape))
                    self.register_buffer(f"{name}_{ab}_std", torch.ones(shape))
            for head in self.heads.values():  # no LoRA init in the bias: the network starts at the library's mean
                nn.init.zeros_(head.bias)

    @torch.no_grad()
    def set_library_stats(self, stats):
        """stats: {module: ((A mean, A std), (B mean, B std))}, each (L, r, d_in) or (L, d_out, r)."""
        for name, ((am, as_), (bm, bs)) in stats.items():
            for key, v in ((f"{name}_A_mean", am), (f"{name}_A_std", as_), (f"{name}_B_mean", bm), (f"{name}_B_std", bs)):
                getattr(self, key).copy_(v)

    def forward(self, task_emb, normalized=False):
        # task_emb: (n, d_e) -> {module: (A (n, L, r, d_in), B (n, L, d_out, r))}; with cfg.zscore the heads' output
        # is the z-score of each element and A = mean + std * z (normalized=True: the z-scores, for the recon loss)
        cfg, r = self.cfg, self.cfg.r
        n, L, M = task_emb.shape[0], cfg.n_layers, len(cfg.modules)
        task = self.task_norm(self.task_proj(task_emb))  # (n, Lat/2)
        layer = self.layer_norm(self.layer_emb.weight)  # (L, Lat/4)
        module = self.module_norm(self.module_emb.weight)  # (M, Lat/4)
        # the batch axes enumerate (sample, module, layer[, A/B][, rank]): every LoRA in one pass, no loops
        phi = torch.cat([task[:, None, None].expand(n, M, L, -1),
                         layer[None, None].expand(n, M, L, -1),
                         module[None, :, None].expand(n, M, L, -1)], dim=-1)  # (n, M, L, Lat)
        x = self.mixer(phi)  # (n, M, L, Lat)
        if cfg.size != "large":  # added before the residual blocks, so the mixer runs once for A and B
            x = x[:, :, :, None] + self.ab_norm(self.ab_emb.weight)  # (n, M, L, 2, Lat)
        if cfg.size == "small":
            x = x[:, :, :, :, None] + rank_signal(r, cfg.latent, x.device).to(x.dtype)  # (n, M, L, 2, r, Lat)
        for block in self.blocks:
            x = x + block(x)
        h = self.out(x)  # (n, M, L, [2, [r,]] H)
        lora = {}
        for i, (name, (d_in, d_out)) in enumerate(cfg.modules.items()):
            head = self.heads[name]
            y = F.linear(h[:, i], head.weight)  # (n, L, [2, [r,]] n_out)
            if cfg.size == "large":
                y = y + head.bias
                A = y[..., :r * d_in].view(n, L, r, d_in)
                B = y[..., r * d_in:].view(n, L, d_out, r)
            elif cfg.size == "medium":
                A = (y[:, :, 0, :r * d_in] + head.bias).view(n, L, r, d_in)
                B = y[:, :, 1, :r * d_out].view(n, L, d_out, r)
            else:  # one rank row of A (d_in) or column of B (d_out) per pass
                A = y[:, :, 0, :, :d_in] + head.bias  # (n, L, r, d_in)
                B = y[:, :, 1, :, :d_out].transpose(2, 3)  # (n, L, d_out, r)
            if cfg.zscore and not normalized:
                A = getattr(self, f"{name}_A_mean") + getattr(self, f"{name}_A_std") * A
                B = getattr(self, f"{name}_B_mean") + getattr(self, f"{name}_B_std") * B
            lora[name] = (A, B)
        return lora


# --------------------------------------------------------------------------- description embeddings

def prepare_description(text):
    if not isinstance(text, str):
        raise TypeError(f"a task description must be a str, got {type(text).__name__}")
    try:
        text.encode("utf-8")  # command-line bytes that are not UTF-8 arrive as lone surrogates
    except UnicodeEncodeError:
        raise ValueError("the description is not valid UTF-8 text") from None
    text = text.strip()
    if not text:
        raise ValueError("empty description")
    return text + "." if text[-1].isalpha() else text  # as the reference does (T2L_NOTES section 4)


@torch.no_grad()
def embed_descriptions(model, tokenizer, texts, batch_size=16, max_tokens=MAX_DESC_TOKENS):
    """The base model's own final-normed hidden state at each description's last token (the paper's
    ablation finds it about as good as gte-large). This is the seam for another encoder: any function
    list[str] -> (N, dim) can take its place in EmbeddingCache (and HyperConfig.emb_dim follows it)."""
    texts = [prepare_description(t) for t in texts]
    if not texts:
        raise ValueError("no descriptions to embed")
    device = next(model.parameters()).device
    pad = getattr(tokenizer, "pad_id", None) or 0  # any id works: pads are masked and never picked
    ids = [tokenizer.encode(t) for t in texts]
    for j, row in enumerate(ids):
        if not row:
            raise ValueError(f"description {texts[j]!r} encodes to no tokens")
        if len(row) > max_tokens:
            warnings.warn(f"description of {len(row)} tokens truncated to {max_tokens}: {texts[j][:60]!r}...")
            ids[j] = row[:max_tokens]
    order = sorted(range(len(ids)), key=lambda j: len(ids[j]))  # similar lengths together: little padding
    out = torch.empty(len(ids), model.config.dim)
    for i in range(0, len(order), batch_size):
        rows = [ids[j] for j in order[i:i + batch_size]]
        T = max(len(row) for row in rows)
        input_ids = torch.tensor([row + [pad] * (T - len(row)) for row in rows], device=device)  # (b, T)
        mask = torch.tensor([[1] * len(row) + [0] * (T - len(row)) for row in rows], device=device)  # right padding
        h = model.hidden(input_ids, attention_mask=mask)  # (b, T, d)
        out[order[i:i + batch_size]] = h[torch.arange(len(rows), device=device), mask.sum(1) - 1].float().cpu()  # last real token
    e = out  # (N, d)
    # fixed scale whatever the encoder: unit L2 norm times sqrt(d), as the reference does for gte (section 4)
    return (F.normalize(e, dim=-1) * math.sqrt(e.shape[-1])).cpu()


ENCODER = f"base-last-token/{MAX_DESC_TOKENS}"  # what embed_descriptions computes; part of every cache entry's key


# --------------------------------------------------------------------------- checkpoints

def base_model_meta(model, model_path="", lora_alpha=16, rslora=True):
    # what a checkpoint remembers about its base model, to refuse a different one later
    c = model.config
    return {"base_model": c.name, "model_path": str(model_path), "n_layers": c.n_layers, "dim": c.dim,
            "vocab_size": c.vocab_size, "lora_shapes": {k: list(v) for k, v in model.lora_shapes().items()},
            "lora_alpha": lora_alpha, "rslora": rslora, "encoder": "base-last-token"}


def check_base_model(cfg, meta, have):
    """have: base_model_meta(model) of the model at hand, or the meta a resumed run expects."""
    # the hypernetwork's config fixes layers and LoRA shapes; the meta adds width and vocabulary
    want = {"n_layers": cfg.n_layers, "lora_shapes": {k: list(v) for k, v in cfg.modules.items()},
            **{k: meta[k] for k in ("dim", "vocab_size") if k in meta}}
    have = {**have, "lora_shapes": {k: list(have.get("lora_shapes", {}).get(k, ())) for k in cfg.modules}}
    bad = [k for k in want if want[k] != have.get(k, want[k])]
    if bad:
        raise ValueError(f"the hypernetwork was trained for base model '{meta.get('base_model', '?')}' with "
                         f"{', '.join(f'{k}={want[k]}' for k in bad)}, but '{have.get('base_model', '?')}' has "
                         f"{', '.join(f'{k}={have[k]}' for k in bad)}: pass the model it was trained on")


def atomic_write(path, write):
    # write to a temporary name and rename: a crash never leaves a half-written file under the real name;
    # the name is per process, so two writers never share one, and a failed write (full disk) removes it
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)


def save_state(run_dir, tensors, config, optimizer_state=None, step=None, weights="hypernet.safetensors"):
    """A complete checkpoint goes into its own folder run_dir/step-NNNNNN (the weights, config.json with the
    step [, optimizer.pt]); only then does the file run_dir/latest, replaced atomically, point at it. A run
    killed at any moment keeps a consistent checkpoint. The previous one is kept too; older ones are removed."""
    os.makedirs(run_dir, exist_ok=True)
    name = f"step-{step or 0:06d}"
    ck = os.path.join(run_dir, name)
    os.makedirs(ck, exist_ok=True)
    state = {k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}
    atomic_write(os.path.join(ck, weights), lambda p: save_file(state, p))
    if optimizer_state is not None:
        atomic_write(os.path.join(ck, "optimizer.pt"), lambda p: torch.save(optimizer_state, p))
    atomic_write(os.path.join(ck, "config.json"), lambda p: _write_json(p, {**config, "step": step}))
    previous = _resolve(run_dir)
    atomic_write(os.path.join(run_dir, "latest"), lambda p: open(p, "w").write(name + "\n"))
    keep = {name, os.path.basename(previous)}
    for old in os.listdir(run_dir):
        if old.startswith("step-") and old not in keep:
            shutil.rmtree(os.path.join(run_dir, old), ignore_errors=True)


def save_checkpoint(run_dir, hypernet, cfg, meta, optimizer_state=None, step=None, run_config=None, progress=None):
    """A hypernetwork checkpoint: its weights, its config, the base model's meta, the run's config and the
    loop's progress (best validation loss and so on), as save_state writes them."""
    config = {"hyper": cfg.to_dict(), "meta": meta, "run": run_config, "progress": progress}
    save_state(run_dir, hypernet.state_dict(), config, optimizer_state, step)


def _resolve(run_dir):
    # a run folder (its `latest` pointer names the checkpoint), or a checkpoint folder itself
    latest = os.path.join(run_dir, "latest")
    if os.path.isfile(latest):
        with open(latest) as f:
            return os.path.join(run_dir, f.read().strip())
    return run_dir


def saved_run(run_dir):
    """The run config (train.py's arguments) the latest checkpoint of run_dir was saved with; {} if none."""
    with open(os.path.join(_resolve(run_dir), "config.json")) as f:
        return json.load(f).get("run") or {}


def load_state(run_dir, weights="hypernet.safetensors", device="cpu", check=None):
    """-> (config dict, tensors, optimizer state or None) of a checkpoint as save_state writes it (the one
    run_dir/latest points at, or a checkpoint folder). check(config) runs before the weights are read."""
    run_dir = _resolve(run_dir)
    cfg_path, st_path = os.path.join(run_dir, "config.json"), os.path.join(run_dir, weights)
    for p in (cfg_path, st_path):
        if not os.path.isfile(p):
            raise FileNotFoundError(f"checkpoint file missing: {p} (train one with: python train.py)")
    try:
        with open(cfg_path) as f:
            config = json.load(f)
        if not isinstance(config, dict):
            raise TypeError("not a JSON object")
        if check is not None:
            check(config)
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"corrupt checkpoint config {cfg_path}: {e!r}") from None
    try:
        state = load_file(st_path, device=str(device))
    except Exception as e:  # safetensors raises several types for truncated or garbage files
        raise ValueError(f"corrupt checkpoint weights {st_path}: {e}") from None
    opt_path = os.path.join(run_dir, "optimizer.pt")
    opt_state = torch.load(opt_path, map_location=device, weights_only=True) if os.path.isfile(opt_path) else None
    return config, state, opt_state


def load_checkpoint(run_dir, model=None, device="cpu", expect_meta=None, with_optimizer=False):
    """-> (hypernet in eval mode, cfg, meta), plus (optimizer state or None, step, progress) with_optimizer.
    A model (or expect_meta) whose shapes differ from the checkpoint's base model is refused."""
    def check(d):
        cfg, meta = HyperConfig.from_dict(d["hyper"]), d.get("meta") or {}
        if model is not None:
            check_base_model(cfg, meta, base_model_meta(model))
        if expect_meta is not None:
            check_base_model(cfg, meta, expect_meta)

    d, state, opt_state = load_state(run_dir, device=device, check=check)
    cfg, meta = HyperConfig.from_dict(d["hyper"]), d.get("meta") or {}
    with torch.device("meta"):  # no init work: every tensor comes from the file
        net = HyperNetwork(cfg)
    expected = net.state_dict()
    bad = sorted(set(expected) ^ set(state)) + [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if bad:
        raise ValueError(f"checkpoint weights {os.path.join(_resolve(run_dir), 'hypernet.safetensors')} do not fit "
                         f"its config.json (e.g. {bad[0]})")
    net.load_state_dict(state, assign=True)
    if not with_optimizer:
        return net.eval(), cfg, meta
    return net.eval(), cfg, meta, opt_state, d.get("step") or 0, d.get("progress") or {}


# --------------------------------------------------------------------------- CLI

def demo_prompt(tok, description, prompt):
    # the description doubles as the task instruction, in the SNI user turn the hypernetwork was trained
    # with (data.sni_prompt): both columns then read the same tokens and differ only by the adapter
    from data import sni_prompt
    return tok.encode(tok.chat([{"role": "user", "content": sni_prompt(description, prompt)}]))


@torch.no_grad()
def side_by_side(model, tok, adapters, prompt_ids, max_new_tokens=64, sync=lambda: None):
    """Greedy generations of each prompt, without and with the adapter. adapters: one hypernetwork output row
    in the per-example format {module: (A (1, L, r, d_in), B (1, L, d_out, r)), "scale": s}.
    -> [{"base", "adapted", "base_s", "adapted_s"}], texts cut at the end of the turn."""
    device = next(model.parameters()).device
    stops = {tok.eos_id} | {tok.tok.token_to_id(t) for t in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>")}
    rows = []
    for ids in prompt_ids:
        row = {}
        for col, lora in (("base", None), ("adapted", adapters)):
            t0 = time.perf_counter()
            new = model.generate(torch.tensor([ids], device=device), max_new_tokens=max_new_tokens, eos_id=tok.eos_id,
                                 lora=lora)[0].tolist()  # one prompt at a time: no padding, a time per generation
            sync()
            row[col + "_s"] = time.perf_counter() - t0
            cut = next((j for j, t in enumerate(new) if t in stops), len(new))
            row[col] = tok.decode(new[:cut], skip_special_tokens=True).strip()
        rows.append(row)
    return rows


def print_side_by_side(prompts, rows, width=None):
    import textwrap
    width = width or shutil.get_terminal_size((100, 24)).columns
    w = max(20, (width - 3) // 2)

    def lines(text):
        return [piece for para in (text or "(nothing)").splitlines() for piece in (textwrap.wrap(para, w) or [""])]

    for n, (prompt, row) in enumerate(zip(prompts, rows), 1):
        print(f"\n[{n}] {prompt}")
        left, right = lines(row["base"]), lines(row["adapted"])
        heads = (f"base model ({row['base_s']:.2f} s)", f"T2L adapter ({row['adapted_s']:.2f} s)")
        for a, b in zip([heads[0], "-" * len(heads[0])] + left, [heads[1], "-" * len(heads[1])] + right):
            print(f"{a:<{w}} | {b}".rstrip())
        for i in range(len(left), len(right)):
            print(f"{'':<{w}} | {right[i]}".rstrip())
        for i in range(len(right), len(left)):
            print(left[i])


def read_prompts(prompts, path):
    prompts = list(prompts or [])
    for i, p in enumerate(prompts, 1):
        if not p.strip():
            raise ValueError(f"--prompt number {i} is empty")
    if path:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"prompts file {path} not found")
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            got = [line.rstrip("\n") for line in f if line.strip()]
        if not got:
            raise ValueError(f"prompts file {path} has no prompts (one per line)")
        prompts += got
    for p in prompts:
        try:
            p.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"a prompt is not valid UTF-8 text: {p[:40]!r}") from None
    return prompts


def main(argv=None):
    from data import Parser
    ap = Parser(description="Generate a LoRA adapter from a task description: write it in PEFT format (--out) "
                            "and/or show what it changes, greedy generations without and with it (--prompt).")
    ap.add_argument("description", help="the task description, in plain text")
    ap.add_argument("--ckpt", required=True, help="run folder with hypernet.safetensors + config.json (from train.py)")
    ap.add_argument("--out", default=None, help="folder to write adapter_config.json + adapter_model.safetensors to "
                    "(without it nothing is written)")
    ap.add_argument("--prompt", action="append", default=[], help="an input for the task; repeat for several")
    ap.add_argument("--prompts-file", default=None, help="a text file of inputs, one per line")
    ap.add_argument("--max-new-tokens", type=int, default=64, help="per generation (eval.py's SNI default)")
    ap.add_argument("--model", default=None, help="base model folder (default: model_path in the checkpoint)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps ...")
    ap.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16",
                    help="base model dtype (train.py and eval.py default to bf16 too)")
    args = ap.parse_args(argv)
    try:
        description = prepare_description(args.description)  # fail before loading anything
        prompts = read_prompts(args.prompt, args.prompts_file)
        if not prompts and not args.out:
            raise ValueError("nothing to do: pass --prompt TEXT (or --prompts-file FILE) to compare generations, "
                             "and/or --out DIR to write the adapter")
        if args.max_new_tokens < 1:
            raise ValueError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
        from data import Tokenizer  # only the CLI needs the base model's files
        from lora import lora_scale, save_adapter
        from model import Transformer
        net, cfg, meta = load_checkpoint(args.ckpt, device=args.device)
        path = args.model or meta.get("model_path")
        if not path:
            raise ValueError(f"the checkpoint in {args.ckpt} does not name its base model: pass --model PATH")
        model = Transformer.from_pretrained(path, device=args.device,
                                            dtype=torch.bfloat16 if args.dtype == "bf16" else torch.float32)
        check_base_model(cfg, meta, base_model_meta(model))
        if cfg.emb_dim != model.config.dim:
            raise ValueError(f"the hypernetwork reads {cfg.emb_dim}-d embeddings from another encoder; this CLI embeds with the base model ({model.config.dim}-d)")
        tokenizer = Tokenizer(path)
        sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
        t0 = time.perf_counter()
        emb = embed_descriptions(model, tokenizer, [description]).to(args.device)  # (1, d)
        sync()
        t1 = time.perf_counter()
        with torch.no_grad():
            lora = net(emb)  # {module: (A (1, L, r, d_in), B (1, L, d_out, r))}
        sync()
        t2 = time.perf_counter()
        alpha, rslora = meta.get("lora_alpha", 16), meta.get("rslora", True)
        took = f"embedding {1000 * (t1 - t0):.1f} ms, hypernetwork {1000 * (t2 - t1):.1f} ms"
        if args.out:
            save_adapter(args.out, {k: (A[0], B[0]) for k, (A, B) in lora.items()}, r=cfg.r, alpha=alpha,
                         base_model_name=meta.get("base_model", model.config.name), rslora=rslora)
            print(f"adapter written to {args.out} ({took})")
        else:
            print(f"adapter generated for {description!r} ({took}); not written (no --out)")
        if prompts:
            model.eval()
            ids = [demo_prompt(tokenizer, description, p) for p in prompts]
            rows = side_by_side(model, tokenizer, {**lora, "scale": lora_scale(cfg.r, alpha, rslora)}, ids,
                                args.max_new_tokens, sync)
            print_side_by_side(prompts, rows)
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

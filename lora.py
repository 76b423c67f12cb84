"""
LoRA (Hu et al. 2021) as one small module that serves every use in t2l with one code path:

  - a static adapter held as parameters (a plain LoRA baseline, or one loaded from a PEFT folder),
  - an adapter per example in the batch, passed in as tensors by the caller (Text-to-LoRA: every
    example carries the adapter the hypernetwork generated from its own description).

    y = x W^T + b + scale * (dropout(x) A^T) B^T        A: (r, d_in), B: (d_out, r)

The scale is rank-stabilised (rsLoRA, Kalajdzievski 2023): alpha / sqrt(r), 16 / sqrt(8) = 5.657 with
the paper's r = 8, alpha = 16 (T2L_NOTES section 2). Whatever scale is trained is the one exported
(`use_rslora` in the PEFT config), so PEFT applies the same update we trained.

Also here: PEFT-format save/load (adapter_config.json + adapter_model.safetensors).
"""
import json
import math
import os
import re
import tempfile

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

R, ALPHA, DROPOUT = 8, 16, 0.05  # the paper's LoRA settings (T2L_NOTES section 2)
TARGETS = ("q_proj", "v_proj")


def lora_scale(r=R, alpha=ALPHA, rslora=True):
    return alpha / math.sqrt(r) if rslora else alpha / r


class LoRALinear(nn.Module):
    """nn.Linear plus an optional static adapter and an optional per-example adapter."""

    def __init__(self, d_in, d_out, bias=False, dropout=DROPOUT):
        super().__init__()
        self.in_features, self.out_features = d_in, d_out
        self.weight = nn.Parameter(torch.empty(d_out, d_in))
        self.bias = nn.Parameter(torch.zeros(d_out)) if bias else None
        self.dropout = dropout
        self.lora_A = self.lora_B = None  # static adapter, created by add_adapter()
        self.scale = 0.0
        self.merged = False

    def add_adapter(self, r=R, alpha=ALPHA, rslora=True, A=None, B=None):
        """Attach a static adapter: trainable init (A as nn.Linear, B = 0) unless A and B are given."""
        if A is None:
            A = torch.empty(r, self.in_features, device=self.weight.device)
            nn.init.kaiming_uniform_(A, a=math.sqrt(5))  # what nn.Linear(d_in, r) does
            B = torch.zeros(self.out_features, r, device=self.weight.device)
        if tuple(A.shape) != (r, self.in_features) or tuple(B.shape) != (self.out_features, r):
            raise ValueError(f"adapter shapes A {tuple(A.shape)} B {tuple(B.shape)} do not fit a "
                             f"{self.in_features}->{self.out_features} layer with r={r}")
        # kept in fp32 whatever the base weights' dtype (an optimiser must not step bf16 parameters); cast per use
        self.lora_A = nn.Parameter(A.to(self.weight.device, torch.float32))
        self.lora_B = nn.Parameter(B.to(self.weight.device, torch.float32))
        self.scale = lora_scale(r, alpha, rslora)

    def delta_weight(self):
        return self.scale * (self.lora_B.float() @ self.lora_A.float())  # (d_out, d_in)

    @torch.no_grad()
    def merge(self):
        if self.lora_A is not None and not self.merged:
            self.weight += self.delta_weight().to(self.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self):
        if self.lora_A is not None and self.merged:
            self.weight -= self.delta_weight().to(self.weight.dtype)
            self.merged = False

    def forward(self, x, A=None, B=None, scale=None):
        # x: (b, T, d_in); per-example A: (b, r, d_in), B: (b, d_out, r)
        y = F.linear(x, self.weight, self.bias)  # (b, T, d_out)
        if self.lora_A is not None and not self.merged:
            xd = F.dropout(x, self.dropout, self.training)
            y = y + self.scale * F.linear(F.linear(xd, self.lora_A.to(x.dtype)), self.lora_B.to(x.dtype))
        if A is not None:
            # two batched matmuls through the rank-r bottleneck: no per-token copy of A or B
            xd = F.dropout(x, self.dropout, self.training)
            h = torch.bmm(xd, A.transpose(1, 2).to(x.dtype))  # (b, T, r)
            y = y + (scale if scale is not None else lora_scale()) * torch.bmm(h, B.transpose(1, 2).to(x.dtype))
        return y


def set_adapters(model, adapters, r=R, alpha=ALPHA, rslora=True):
    """One static adapter for the whole model, or None to remove it:
    adapters = {module: (A (n_layers, r, d_in), B (n_layers, d_out, r))}, e.g. one row of a T2L output."""
    for i, layer in enumerate(model.model.layers):
        for name in TARGETS:
            mod = getattr(layer.self_attn, name)
            mod.lora_A = mod.lora_B = None
            if adapters is not None and name in adapters:
                A, B = adapters[name]
                mod.add_adapter(r, alpha, rslora, A=A[i].detach(), B=B[i].detach())


# --------------------------------------------------------------------------- PEFT format

def _peft_key(layer, module, which):
    # PEFT wraps LlamaForCausalLM as base_model.model.<module path>; our module paths are the HF ones
    return f"base_model.model.model.layers.{layer}.self_attn.{module}.lora_{which}.weight"


def save_adapter(out_dir, adapters, r=R, alpha=ALPHA, base_model_name="", rslora=True):
    """adapters: {module: (A (n_layers, r, d_in), B (n_layers, d_out, r))} for one example. Each file is written
    under a temporary name and renamed, so a half-written file never exists."""
    tensors = {}
    for module, (A, B) in adapters.items():
        for i in range(A.shape[0]):
            tensors[_peft_key(i, module, "A")] = A[i].detach().float().contiguous().cpu()
            tensors[_peft_key(i, module, "B")] = B[i].detach().float().contiguous().cpu()
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": alpha,
              "use_rslora": rslora, "target_modules": sorted(adapters), "lora_dropout": DROPOUT,
              "bias": "none", "fan_in_fan_out": False, "inference_mode": True,
              "base_model_name_or_path": base_model_name}
    os.makedirs(out_dir, exist_ok=True)  # other files there (a training run's checkpoints, its log) stay
    for name, write in (("adapter_model.safetensors", lambda p: save_file(tensors, p)),
                        ("adapter_config.json", lambda p: json.dump(config, open(p, "w"), indent=2))):
        fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{name}.")
        os.close(fd)
        try:
            write(tmp)
            os.replace(tmp, os.path.join(out_dir, name))
        except BaseException:
            os.remove(tmp)
            raise


def read_peft(adapter_dir):
    """(adapter_config.json as a dict, the tensors of adapter_model.safetensors) of a PEFT adapter folder."""
    cfg_path = os.path.join(adapter_dir, "adapter_config.json")
    st_path = os.path.join(adapter_dir, "adapter_model.safetensors")
    for p in (cfg_path, st_path):
        if not os.path.isfile(p):
            raise FileNotFoundError(f"adapter file missing: {p} ({adapter_dir} is not a PEFT adapter)")
    try:
        with open(cfg_path) as f:
            cfg = json.load(f)
        return cfg, load_file(st_path)
    except Exception as e:  # bad JSON or a truncated safetensors file
        raise ValueError(f"{adapter_dir}: unreadable adapter ({e})") from None


def load_adapter(model, adapter_dir):
    """Apply a PEFT-format LoRA adapter to the model as a static adapter (unmerged)."""
    cfg, tensors = read_peft(adapter_dir)
    r, alpha, rslora = int(cfg["r"]), float(cfg["lora_alpha"]), bool(cfg.get("use_rslora", False))
    targets = cfg["target_modules"]
    targets = [targets] if isinstance(targets, str) else list(targets)
    modules = dict(model.named_modules())
    used = set()
    for key in tensors:
        if not key.endswith(".lora_A.weight"):
            continue
        path = key[len("base_model.model."):-len(".lora_A.weight")]
        mod = modules.get(path)
        if not isinstance(mod, LoRALinear):
            raise ValueError(f"adapter tensor {key} targets '{path}', which is not a LoRA-capable module of this model")
        b_key = key.replace(".lora_A.", ".lora_B.")
        if b_key not in tensors:
            raise ValueError(f"adapter has {key} but no {b_key}")
        mod.add_adapter(r, alpha, rslora, A=tensors[key], B=tensors[b_key])
        used.update((key, b_key))
    if not used:
        raise ValueError(f"adapter in {adapter_dir} has no lora_A/lora_B tensors for target modules {targets}")
    unused = set(tensors) - used
    if unused:
        raise ValueError(f"adapter has tensors this model cannot use, e.g. {sorted(unused)[0]}")
    return cfg


# --------------------------------------------------------------------------- a library of adapters

def read_adapter(adapter_dir):
    """A PEFT LoRA folder as tensors -> (config, {module: (A (n_layers, r, d_in), B (n_layers, d_out, r))})."""
    cfg, tensors = read_peft(adapter_dir)
    if cfg.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{adapter_dir}: a {cfg.get('peft_type')} adapter, not LoRA")
    found = {}  # (module, A|B) -> {layer: tensor}
    for key, t in tensors.items():
        m = re.search(r"layers\.(\d+)\.(?:[^.]+\.)*?([^.]+)\.lora_([AB])(?:\.[^.]+)?\.weight$", key)
        if m is None:
            raise ValueError(f"{adapter_dir}: tensor {key} is not a per-layer lora_A/lora_B weight")
        found.setdefault((m[2], m[3]), {})[int(m[1])] = t.float()
    modules = sorted({name for name, _ in found})
    adapters = {}
    for name in modules:
        A, B = found.get((name, "A"), {}), found.get((name, "B"), {})
        if sorted(A) != sorted(B) or sorted(A) != list(range(len(A))):
            raise ValueError(f"{adapter_dir}: {name} needs lora_A and lora_B for every layer 0..n-1")
        adapters[name] = (torch.stack([A[i] for i in sorted(A)]), torch.stack([B[i] for i in sorted(B)]))
    if not adapters:
        raise ValueError(f"{adapter_dir}: the adapter holds no LoRA tensors")
    return cfg, adapters


def load_library(folder, shapes, n_layers, r=R, alpha=ALPHA, rslora=True, exclude=()):
    """Every subfolder of `folder` is a PEFT adapter named after its task; all must fit the base model
    (shapes: {module: (d_in, d_out)}, n_layers) with the given rank and scale. -> {task: adapters}"""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"library folder {folder} not found")
    names = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)) and not d.startswith("."))
    missing = [t for t in exclude if t not in names]
    if missing:
        raise ValueError(f"--exclude {missing[0]}: the library {folder} has no adapter of that name")
    library = {}
    for name in names:
        if name in exclude:
            continue
        where = os.path.join(folder, name)
        cfg, adapters = read_adapter(where)
        have = (int(cfg.get("r", -1)), float(cfg.get("lora_alpha", -1)), bool(cfg.get("use_rslora", False)))
        if have != (r, float(alpha), rslora):
            raise ValueError(f"{where}: r={have[0]}, alpha={have[1]:g}, rslora={have[2]}; the library needs "
                             f"r={r}, alpha={alpha}, rslora={rslora}")
        if sorted(adapters) != sorted(shapes):
            raise ValueError(f"{where}: adapts {', '.join(adapters)}, the library needs {', '.join(sorted(shapes))}")
        for module, (A, B) in adapters.items():
            d_in, d_out = shapes[module]
            if tuple(A.shape) != (n_layers, r, d_in) or tuple(B.shape) != (n_layers, d_out, r):
                raise ValueError(f"{where}: {module} has A {tuple(A.shape)} and B {tuple(B.shape)}, but the base "
                                 f"model needs {(n_layers, r, d_in)} and {(n_layers, d_out, r)}: another base model?")
        library[name] = adapters
    if len(library) < 2:
        raise ValueError(f"the library {folder} has {len(library)} adapter(s) left"
                         f"{' after --exclude' if exclude else ''}: reconstruction z-scores across tasks and needs two or more")
    return library


def library_stats(library, eps=1e-6):
    """Per-element mean and std of A and B across the library's tasks -> {module: ((A mean, std), (B mean, std))}."""
    stats = {}
    for module in next(iter(library.values())):
        pair = []
        for i in range(2):
            x = torch.stack([adapters[module][i] for adapters in library.values()])  # (tasks, L, ...)
            pair.append((x.mean(0), x.std(0, unbiased=False).clamp(min=eps)))
        stats[module] = tuple(pair)
    return stats


def delta_w_gram(adapters):
    """Inner products <dW_i, dW_j> of n adapters' weight updates dW = B A, summed over every module and layer,
    without forming dW: <B_i A_i, B_j A_j> = sum over r, s of (B_i^T B_j)[r, s] (A_i A_j^T)[r, s].
    adapters: {module: (A (n, L, r, d_in), B (n, L, d_out, r))} (the hypernetwork's output) -> (n, n) float64"""
    gram = 0
    for A, B in adapters.values():
        for layer in range(A.shape[1]):  # one layer at a time: (n, n, r, r) intermediates
            a, b = A[:, layer].double(), B[:, layer].double()
            gram = gram + (torch.einsum("ior,jos->ijrs", b, b) * torch.einsum("ird,jsd->ijrs", a, a)).sum((2, 3))
    return gram

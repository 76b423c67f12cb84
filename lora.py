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
import shutil
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
        self.lora_A = nn.Parameter(A.to(self.weight))
        self.lora_B = nn.Parameter(B.to(self.weight))
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
            y = y + self.scale * F.linear(F.linear(xd, self.lora_A), self.lora_B)
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
    """adapters: {module: (A (n_layers, r, d_in), B (n_layers, d_out, r))} for one example.
    Written to a temporary folder first and renamed, so a half-written adapter never exists."""
    tensors = {}
    for module, (A, B) in adapters.items():
        for i in range(A.shape[0]):
            tensors[_peft_key(i, module, "A")] = A[i].detach().float().contiguous().cpu()
            tensors[_peft_key(i, module, "B")] = B[i].detach().float().contiguous().cpu()
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": alpha,
              "use_rslora": rslora, "target_modules": sorted(adapters), "lora_dropout": DROPOUT,
              "bias": "none", "fan_in_fan_out": False, "inference_mode": True,
              "base_model_name_or_path": base_model_name}
    out_dir = os.path.abspath(out_dir)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".adapter-")
    save_file(tensors, os.path.join(tmp, "adapter_model.safetensors"))
    with open(os.path.join(tmp, "adapter_config.json"), "w") as f:
        json.dump(config, f, indent=2)
    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)


def load_adapter(model, adapter_dir):
    """Apply a PEFT-format LoRA adapter to the model as a static adapter (unmerged)."""
    cfg_path = os.path.join(adapter_dir, "adapter_config.json")
    st_path = os.path.join(adapter_dir, "adapter_model.safetensors")
    for p in (cfg_path, st_path):
        if not os.path.isfile(p):
            raise FileNotFoundError(f"adapter file missing: {p}")
    with open(cfg_path) as f:
        cfg = json.load(f)
    r, alpha, rslora = int(cfg["r"]), float(cfg["lora_alpha"]), bool(cfg.get("use_rslora", False))
    targets = cfg["target_modules"]
    targets = [targets] if isinstance(targets, str) else list(targets)
    tensors = load_file(st_path)
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

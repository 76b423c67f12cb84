"""train.py's other two recipes, end to end on a tiny random Llama: a plain LoRA (`--lora`) lowers its validation
loss and its adapter gives the same logits in real peft; a library build skips what is complete; reconstruction
(`--recon`) reproduces a library of three adapters (A, B and delta W, de-normalised by the network itself);
the loop resumes exactly after kill -9 in every mode; bad inputs give one line. Also how benchmark training
examples are rendered (cloze as lm-eval scores it, mc, GSM8K)."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

import t2l
import data
from data import GSM8K_PREFILL, Tokenizer, cloze_item, gsm8k_user, lm_eval_encode, mc_item
from lora import read_adapter, save_adapter
from tests.conftest import ROOT
from tests.test_train import TRAIN, env, latest_step, ok, one_error_line, run, tiny_data, tiny_model

transformers = pytest.importorskip("transformers")
torch.set_num_threads(1)

SNI = TRAIN[:3]  # the tiny SNI tasks with files
TOPICS = {SNI[0]: "tell whether the number is even", SNI[1]: "name the animal in the sentence",
          SNI[2]: "say which colour is written", "arc_easy": "answer the science question"}
ARC = [{"id": f"q{i}", "question": f"Is {i} a number?", "answerKey": "B",  # learnable: the right answer never changes
        "choices": {"text": [f"not {i}", "yes it is", "none"], "label": ["A", "B", "C"]}} for i in range(30)]
GSM = [{"question": f"What is {i} plus {i}?", "answer": f"{i} plus {i} is <<{i}+{i}={2 * i}>>{2 * i}.\n#### {2 * i}"}
       for i in range(4)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, model_dir):
    root = tmp_path_factory.mktemp("recipes")
    model = tiny_model(root / "tiny", 32, model_dir)
    data = tiny_data(root / "data")
    for name, topic in TOPICS.items():  # descriptions that differ where the encoder looks: at their end
        descs = [f"Variant {k}: {topic}" for k in range(6)]
        (data / "tasks" / "descriptions" / f"{name}.json").write_text(json.dumps({"name": name, "descriptions": descs}))
    for task, docs in (("arc_easy", ARC), ("gsm8k", GSM)):
        (data / "benchmarks" / task).mkdir(parents=True)
        (data / "benchmarks" / task / "train.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    common = ["--model", model, "--data", data, "--device", "cpu", "--dtype", "fp32", "--descriptions-per-task", 4,
              "--max-len", 64, "--tasks-per-batch", 2, "--log-every", 1, "--embedding-cache", root / "emb"]
    return {"root": root, "model": model, "data": data, "common": common}


def lora_args(tiny, *extra):
    return [*tiny["common"], "--lora", "--lr", 1e-2, "--steps", 12, "--eval-every", 3, *extra]


# ------------------------------------------------------------------------------------------ rendering

def test_benchmark_examples_are_rendered_as_scored(tiny):
    tok = Tokenizer(tiny["model"])
    cloze = data.benchmark_examples(tok, tiny["data"], "arc_easy", 64)
    contexts, conts, gold, _ = cloze_item("arc_easy", ARC[0])
    ctx, cont = lm_eval_encode(tok, contexts[gold], conts[gold])
    assert cloze[0] == (ctx + cont, len(ctx)) and tok.decode(cont) == " yes it is"  # what cloze scoring reads
    mc = data.benchmark_examples(tok, tiny["data"], "arc_easy", 256, scoring="mc")
    ids, n = mc[0]
    user, labels, gold = mc_item("arc_easy", ARC[0])
    assert tok.decode(ids[:n]) == tok.chat([{"role": "user", "content": user}])
    assert tok.decode(ids[n:]).startswith("B<|im_end|>")
    ids, n = data.benchmark_examples(tok, tiny["data"], "gsm8k", 256)[3]
    assert tok.decode(ids[:n]) == tok.chat([{"role": "user", "content": gsm8k_user(GSM[3]["question"])}]) + GSM8K_PREFILL
    assert tok.decode(ids[n:]).startswith(" 3 plus 3 is 6.\n#### 6<|im_end|>")  # no calculator notes


def test_task_names(tiny):
    folder = tiny["data"]
    assert data.task_names("sni", folder) == SNI
    assert data.task_names("arc_easy,sni:2,arc_easy", folder) == ["arc_easy", *SNI[:2]]
    for spec, msg in (("boolq", "no training split"), ("task999_nope", "unknown task 'task999_nope'"),
                      ("sni:x", "sni:N")):
        with pytest.raises(ValueError, match=msg):
            data.task_names(spec, folder)


# ------------------------------------------------------------------------------------------ plain LoRA

def test_lora_learns_and_round_trips_through_peft(tiny):
    peft = pytest.importorskip("peft")
    out = tiny["root"] / "lora"
    r = ok(run("train.py", *lora_args(tiny, "--tasks", "arc_easy", "--dropout", 0, "--neftune", 0, "--steps", 30,
                                       "--patience", 0, "--lr", 3e-2), "--out", out))
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    best = min(x["val_loss"] for x in log)
    assert best < log[0]["val_loss"] - 0.3, r.stdout  # on the held-out 10% of the task: it learned the task
    assert "adapter (best validation loss" in r.stdout
    hf = transformers.AutoModelForCausalLM.from_pretrained(tiny["model"]).eval()
    pm = peft.PeftModel.from_pretrained(hf, out).eval()
    from lora import load_adapter
    from model import Transformer
    ours = Transformer.from_pretrained(tiny["model"]).eval()
    load_adapter(ours, out)
    ids = torch.randint(0, 49152, (2, 11))
    with torch.no_grad():
        assert (ours(ids) - pm(ids).logits).abs().max() <= 1e-4
    cfg, adapters = read_adapter(out)
    assert cfg["r"] == 8 and cfg["lora_alpha"] == 16 and cfg["use_rslora"] and sorted(adapters) == ["q_proj", "v_proj"]


def test_library_build_skips_complete_adapters(tiny):
    lib = tiny["root"] / "lib-build"
    r = ok(run("train.py", *lora_args(tiny, "--tasks", "sni:2"), "--library", lib))
    assert all((lib / t / "adapter_model.safetensors").is_file() for t in SNI[:2])
    assert [json.loads(x)["task"] for x in (lib / "build.jsonl").read_text().splitlines()] == SNI[:2]
    before = (lib / SNI[0] / "adapter_model.safetensors").read_bytes()
    r = ok(run("train.py", *lora_args(tiny, "--tasks", "sni:3"), "--library", lib))
    assert r.stdout.count("complete, skipped") == 2 and (lib / SNI[2] / "adapter_config.json").is_file()
    assert (lib / SNI[0] / "adapter_model.safetensors").read_bytes() == before
    # eval.py --lora LIBRARY: every task wears its own adapter
    common = ["--model", tiny["model"], "--data", tiny["data"], "--dtype", "fp32", "--limit", 2]
    res = tiny["root"] / "lib-eval.json"
    ok(run("eval.py", *common, "--task", f"sni:{SNI[0]},sni:{SNI[1]}", "--lora", lib, "--out", res))
    assert [r["lora"] for r in json.loads(res.read_text())["results"]] == [str(lib / t) for t in SNI[:2]]
    line = one_error_line(run("eval.py", *common, "--task", "sni:task900_tiny_heldout", "--lora", lib))
    assert "neither an adapter nor a library with an adapter for task900_tiny_heldout" in line


# ------------------------------------------------------------------------------------------ reconstruction

def random_library(folder, model_dir, names, seed=0):
    from model import Transformer
    m = Transformer.from_pretrained(model_dir)
    g = torch.Generator().manual_seed(seed)
    lib = {}
    for name in names:
        lib[name] = {k: (torch.randn(m.config.n_layers, 8, d_in, generator=g) * 0.1,
                         torch.randn(m.config.n_layers, d_out, 8, generator=g) * 0.1)
                     for k, (d_in, d_out) in m.lora_shapes().items()}
        save_adapter(folder / name, lib[name], base_model_name="tiny")
    return lib


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_recon_reproduces_a_library(tiny):
    lib_dir, out = tiny["root"] / "lib-random", tiny["root"] / "recon"
    lib = random_library(lib_dir, tiny["model"], SNI)
    r = ok(run("train.py", *tiny["common"], "--recon", lib_dir, "--steps", 300, "--eval-every", 100, "--lr", 3e-3,
               "--out", out, "--log-every", 100))
    assert "reconstruction error" in r.stdout and (out / "recon_errors.json").is_file()
    net, cfg, meta = t2l.load_checkpoint(out)  # what t2l.py and eval.py --t2l load: de-normalisation built in
    assert cfg.zscore
    from model import Transformer
    model = Transformer.from_pretrained(tiny["model"])
    tok = Tokenizer(tiny["model"])
    for name in SNI:
        descs = [f"Variant {k}: {TOPICS[name]}" for k in range(2)]  # training descriptions
        with torch.no_grad():
            gen = net(t2l.embed_descriptions(model, tok, descs))
        for k, (A, B) in lib[name].items():
            for i in range(2):
                gA, gB = gen[k][0][i], gen[k][1][i]
                assert rel(gA, A) < 0.1 and rel(gB, B) < 0.1 and rel(gB @ gA, B @ A) < 0.1, (name, k)
    errors = json.loads((out / "recon_errors.json").read_text())
    assert sorted(errors) == SNI and all(e["dW"] < 0.1 for e in errors.values())


def test_recon_exclude_leaves_the_task_out(tiny):
    lib_dir, out = tiny["root"] / "lib-random", tiny["root"] / "recon-loo"
    if not lib_dir.exists():
        random_library(lib_dir, tiny["model"], SNI)
    r = ok(run("train.py", *tiny["common"], "--recon", lib_dir, "--exclude", SNI[2], "--steps", 2, "--out", out))
    assert "reconstruction of 2 adapters" in r.stdout
    assert sorted(json.loads((out / "recon_errors.json").read_text())) == SNI[:2]


# ------------------------------------------------------------------------------------------ exact resume

def kill_after_checkpoint(args, out, at=3):
    p = subprocess.Popen([sys.executable, "train.py", *map(str, args)], cwd=ROOT, env=env(),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        t0 = time.time()
        while latest_step(out) < at and p.poll() is None and time.time() - t0 < 120:
            time.sleep(0.005)
        os.kill(p.pid, signal.SIGKILL)
    finally:
        p.wait()
    assert p.returncode == -signal.SIGKILL, "the run ended before it could be killed: give it more steps"
    return latest_step(out)


@pytest.mark.parametrize("mode", ["lora", "recon"])
def test_resume_after_kill_is_exact(tiny, mode):
    root = tiny["root"] / f"resume-{mode}"
    if mode == "lora":
        args = [*tiny["common"], "--lora", "--tasks", "sni", "--lr", 1e-2, "--steps", 60, "--eval-every", 3,
                "--patience", 0]
    else:
        lib_dir = root / "lib"
        random_library(lib_dir, tiny["model"], SNI)
        args = [*tiny["common"], "--recon", lib_dir, "--steps", 400, "--eval-every", 3]
    ok(run("train.py", *args, "--out", root / "A"))
    killed_at = kill_after_checkpoint([*args, "--out", root / "B"], root / "B")
    r = ok(run("train.py", *args, "--resume", "--out", root / "B"))
    assert re.search(rf"resumed from .* at step {killed_at}\b", r.stdout), r.stdout
    weights = "lora.safetensors" if mode == "lora" else "hypernet.safetensors"
    a, b = (t2l.load_state(root / x, weights)[1] for x in "AB")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    if mode == "lora":
        assert (root / "A" / "adapter_model.safetensors").read_bytes() == (root / "B" / "adapter_model.safetensors").read_bytes()


def test_early_stopping_keeps_the_best_adapter(tiny):
    out = tiny["root"] / "early"
    r = ok(run("train.py", *lora_args(tiny, "--tasks", SNI[0], "--lr", 0.5, "--steps", 60, "--eval-every", 1,
                                       "--patience", 2), "--out", out))
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert "stopping early" in r.stdout and len(log) < 61
    best = min(range(len(log)), key=lambda i: log[i]["val_loss"])
    assert len(log) - 1 - best == 2  # stopped two evaluations after the best
    config = json.loads((out / f"step-{log[-1]['step']:06d}" / "config.json").read_text())
    assert config["progress"]["finished"] and config["progress"]["best_step"] == log[best]["step"]
    r = ok(run("train.py", *lora_args(tiny, "--tasks", SNI[0], "--steps", 60), "--resume", "--out", out))
    assert "finished already" in r.stdout


# ------------------------------------------------------------------------------------------ bad input

def test_bad_inputs_one_line(tiny):
    root, common = tiny["root"] / "bad", tiny["common"]
    lib = root / "lib"
    random_library(lib, tiny["model"], SNI[:2])
    before = {p: p.read_bytes() for p in lib.rglob("*") if p.is_file()}
    cases = [
        (["--lora", "--tasks", "nope", "--out", root / "x"], "unknown task 'nope'"),
        (["--lora", "--tasks", "boolq", "--out", root / "x"], "boolq has no training split"),
        (["--lora", "--tasks", "arc_easy", "--recon", lib, "--out", root / "x"], "two different recipes"),
        (["--lora", "--out", root / "x"], "--lora needs --tasks"),
        (["--recon", lib, "--tasks", "sni", "--out", root / "x"], "--recon trains on the tasks of its library"),
        (["--library", lib, "--tasks", "sni"], "--library and --scoring go with --lora"),
        (["--recon", lib, "--exclude", SNI[0], "--out", root / "x"], "needs two or more"),
        (["--recon", lib, "--exclude", "task999_x", "--out", root / "x"], "no adapter of that name"),
        (["--recon", root / "missing", "--out", root / "x"], "not found"),
        (["--recon", root / "empty", "--out", root / "x"], "has 0 adapter"),
        (["--recon", root / "mixed", "--out", root / "x"], "is not a PEFT adapter"),
    ]
    (root / "empty").mkdir()
    (root / "mixed" / "notes").mkdir(parents=True)
    random_library(root / "mixed", tiny["model"], SNI[:2])
    for args, msg in cases:
        r = run("train.py", *common, *args)
        lines = r.stderr.strip().splitlines()
        assert r.returncode in (1, 2) and len(lines) == 1 and lines[0].startswith("error: ") and msg in lines[0], \
            (args, r.stderr)
    assert not (root / "x").exists()
    assert before == {p: p.read_bytes() for p in lib.rglob("*") if p.is_file()}  # nothing written was touched


def test_library_of_another_base_model_is_refused(tiny, model_dir):
    root = tiny["root"] / "other-base"
    wide = tiny_model(root / "wide", 64, model_dir)
    random_library(root / "lib", wide, SNI[:2])
    line = one_error_line(run("train.py", *tiny["common"], "--recon", root / "lib", "--out", root / "x"))
    assert "another base model?" in line
    rank4 = root / "lib4"
    lib = random_library(root / "lib-ok", tiny["model"], SNI[:2])
    save_adapter(rank4 / SNI[0], {k: (A[:, :4], B[:, :, :4]) for k, (A, B) in lib[SNI[0]].items()}, r=4)
    save_adapter(rank4 / SNI[1], lib[SNI[1]])
    assert "r=4" in one_error_line(run("train.py", *tiny["common"], "--recon", rank4, "--out", root / "y"))


def test_validation_is_deterministic_in_every_recipe(tiny):
    # dropout (hypernetwork and LoRA inputs, here 0.5) is off while validating: twice the same number
    import recipes
    import train
    from model import Transformer
    model = Transformer.from_pretrained(tiny["model"])
    model.requires_grad_(False)
    tok = Tokenizer(tiny["model"])
    meta = t2l.base_model_meta(model)
    lib_dir = tiny["root"] / "lib-det"
    random_library(lib_dir, tiny["model"], SNI)
    for extra in ([], ["--lora", "--tasks", "arc_easy", "--out", tiny["root"] / "det-lora"], ["--recon", lib_dir]):
        args = train.parse_args([*map(str, tiny["common"]), "--dropout", "0.5", "--steps", "2", *map(str, extra)])
        for layer in model.model.layers:
            layer.self_attn.q_proj.dropout = layer.self_attn.v_proj.dropout = args.dropout
        recipe = {"sft": recipes.SFT, "recon": recipes.Recon}.get(args.mode)
        recipe = recipe(args, model, tok, meta, args.out, print) if recipe else recipes.LoRA(
            args, model, tok, meta, args.out, print, ["arc_easy"])
        with torch.no_grad():
            for p in recipe.params:
                p.add_(torch.randn_like(p) * 0.05)  # B != 0: the adapters act, so dropout would show
        model.train()
        assert recipe.validate(torch.no_grad()) == recipe.validate(torch.no_grad()), args.mode

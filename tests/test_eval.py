"""eval.py: the batched scorers (shared-prefix cache, length-sorted batches, one context for all choices)
against a naive one-question-at-a-time loop on the real default model; CLI errors."""
import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import eval as ev
from data import TASKS, Tokenizer, cloze_item, load_benchmark, mc_item
from model import Transformer

torch.set_num_threads(2)
N = 6  # questions per task: enough to cover several batches and padding lengths


@pytest.fixture(scope="module")
def real(model_dir):
    return Transformer.from_pretrained(model_dir), Tokenizer(model_dir)


def naive_mc(model, tok, task, doc):
    user, labels, gold = mc_item(task, doc)
    ids = torch.tensor([tok.encode(tok.chat([{"role": "user", "content": user}]))])
    logits = model(ids)[0, -1]
    return int(logits[[tok.encode(lab)[0] for lab in labels]].argmax().item() == gold)


def naive_cloze(model, tok, task, doc):
    contexts, conts, gold, lens = cloze_item(task, doc)
    ll = []
    for c, x in zip(contexts, conts):
        ctx, cont = ev.lm_eval_encode(tok, c, x)
        ids = torch.tensor([ctx + cont])
        logp = F.log_softmax(model(ids)[0, :-1].float(), -1)  # (T-1, vocab)
        ll.append(sum(logp[len(ctx) - 1 + j, t].item() for j, t in enumerate(cont)))
    return ll, gold, lens


@pytest.mark.parametrize("task", TASKS)
def test_mc_batched_equals_naive(real, data_dir, task):
    model, tok = real
    docs = load_benchmark(task, data_dir, limit=N)
    with torch.no_grad():
        got = ev.score_mc(model, tok, task, docs, 4, "cpu", lambda n: None)["acc"]
        want = [naive_mc(model, tok, task, d) for d in docs]
    assert got == want


@pytest.mark.parametrize("task", TASKS)
def test_cloze_batched_equals_naive(real, data_dir, task):
    model, tok = real
    docs = load_benchmark(task, data_dir, limit=N)
    with torch.no_grad():
        naive = [naive_cloze(model, tok, task, d) for d in docs]
        lls = ev.cloze_logliks(model, tok, task, docs, 3, "cpu", lambda n: None)
        got = ev.score_cloze(model, tok, task, docs, 3, "cpu", lambda n: None)
    for (want, _, _), ll in zip(naive, lls):  # fp32: the batched path reorders sums, nothing more
        assert max(abs(a - b) for a, b in zip(ll, want)) < 1e-3
    acc = [int(max(range(len(ll)), key=ll.__getitem__) == gold) for ll, gold, _ in naive]
    assert got["acc"] == acc
    if naive[0][2] is not None:
        norm = [int(max(range(len(ll)), key=lambda i: ll[i] / lens[i]) == gold) for ll, gold, lens in naive]
        assert got["acc_norm"] == norm


def test_common_prefix():
    assert ev.common_prefix([[1, 2, 3], [1, 2, 4], [1, 2]]) == 2
    assert ev.common_prefix([[5], [6]]) == 0


def run(*args, cwd=None):
    p = subprocess.run([sys.executable, "eval.py", *args], capture_output=True, text=True, cwd=cwd or ev.__file__.rsplit("/", 1)[0])
    return p.returncode, p.stdout, p.stderr


@pytest.mark.parametrize("args,msg", [
    (["--task", "nope"], "unknown task 'nope'"),
    (["--task", "arc_easy", "--limit", "-3"], "--limit must be positive"),
    (["--task", "arc_easy", "--limit", "ten"], "--limit must be a whole number"),
    (["--task", "arc_easy", "--model", "/nonexistent"], "no config.json"),
    (["--task", "arc_easy", "--out", "eval.py/r.json"], "cannot create the folder of --out"),  # under a file
    (["--task", "arc_easy", "--out", "tests"], "cannot write --out 'tests'"),  # a folder
])
def test_cli_bad_input(args, msg):
    code, out, err = run(*args)
    assert code != 0 and msg in err and len(err.strip().splitlines()) == 1


def test_cli_end_to_end(model_dir, data_dir, tmp_path):
    out = tmp_path / "new" / "folder" / "r.json"  # --out creates its folder
    code, stdout, err = run("--task", "openbookqa,boolq", "--limit", "5", "--model", str(model_dir), "--data", str(data_dir),
                            "--out", str(out))
    assert code == 0, err
    res = json.loads(out.read_text())["results"]
    assert [r["task"] for r in res] == ["openbookqa", "boolq"]
    assert all(r["n"] == 5 and 0 <= r["accuracy"] <= 1 and r["scoring"] == "mc" and r["dtype"] == "bf16" for r in res)
    small = tmp_path / "data" / "benchmarks" / "openbookqa"  # a 3-question split, to go beyond cheaply
    small.mkdir(parents=True)
    lines = (data_dir / "benchmarks" / "openbookqa" / "test.jsonl").read_text().splitlines()[:3]
    (small / "test.jsonl").write_text("\n".join(lines) + "\n")
    code, _, err = run("--task", "openbookqa", "--limit", "10", "--model", str(model_dir), "--data", str(tmp_path / "data"))
    assert code == 0 and "beyond the split (3); using all of it" in err


def test_t2l_at_init_scores_like_the_base_model(real, model_dir, data_dir, tmp_path):
    # bias-HyperInit: a fresh `large` hypernetwork emits B = 0, so the scores must be the base model's
    from lora import set_adapters
    from t2l import HyperConfig, HyperNetwork, base_model_meta, embed_descriptions, save_checkpoint
    model, tok = real
    net = HyperNetwork(HyperConfig("large", model.config.dim, model.config.n_layers, model.lora_shapes()))
    save_checkpoint(tmp_path / "run", net, net.cfg, base_model_meta(model))
    docs = load_benchmark("arc_challenge", data_dir, limit=N)
    with torch.no_grad():
        base = ev.cloze_logliks(model, tok, "arc_challenge", docs, 4, "cpu", lambda n: None)
        lora = net.eval()(embed_descriptions(model, tok, ["Pick the right answer to a science question."]))
        set_adapters(model, {k: (A[0], B[0]) for k, (A, B) in lora.items()})
        same = ev.cloze_logliks(model, tok, "arc_challenge", docs, 4, "cpu", lambda n: None)
        set_adapters(model, {k: (A[0], torch.randn_like(B[0]) * 0.01) for k, (A, B) in lora.items()})
        other = ev.cloze_logliks(model, tok, "arc_challenge", docs, 4, "cpu", lambda n: None)
        set_adapters(model, None)
    assert same == base and other != base
    res = ev.main(["--task", "arc_challenge", "--limit", "2", "--model", str(model_dir),
                   "--data", str(data_dir), "--t2l", str(tmp_path / "run"), "--controls"])
    t2l_runs = [r for r in res if r["adapter"] == "t2l"]
    assert len(t2l_runs) == 3 and len([r for r in res if r["adapter"] == "t2l-nonsense"]) == 3
    assert [r for r in res if r["adapter"] == "t2l-mean"][0]["accuracy"] == sum(r["accuracy"] for r in t2l_runs) / 3

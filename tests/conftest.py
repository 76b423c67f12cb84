"""Shared fixtures. Tests that need the real assets (written by `python prepare.py`) look for them under
$T2L_ASSETS (default <repo>/assets) and skip when they are absent, unless T2L_REQUIRE_ASSETS=1 (CI),
where a missing asset is a failure."""
import os
import pathlib
import shutil

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "data"  # tiny hand-checked copies in the formats prepare.py reads
MODEL_NAME = "SmolLM2-135M-Instruct"


def need(path, what):
    if path.exists():
        return path
    msg = f"{what} not found at {path}: run `python prepare.py` (or set T2L_ASSETS)"
    if os.environ.get("T2L_REQUIRE_ASSETS") == "1":
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def assets():
    return need(pathlib.Path(os.environ.get("T2L_ASSETS", ROOT / "assets")).resolve(), "assets folder")


@pytest.fixture(scope="session")
def model_dir(assets):
    return need(assets / "models" / MODEL_NAME, "base model")


@pytest.fixture(scope="session")
def data_dir(assets):
    return need(assets / "data", "prepared data")


@pytest.fixture(scope="session")
def shared_data():
    # the read-only data folder prepare.py imports from; absent outside the original workspace
    for p in (os.environ.get("T2L_SHARED_DATA"), ROOT.parent / "shared" / "data", "/work/shared/data"):
        if p and (pathlib.Path(p) / "benchmarks").is_dir():
            return pathlib.Path(p)
    pytest.skip("no shared data folder (set T2L_SHARED_DATA)")


@pytest.fixture(scope="session", autouse=True)
def private_embedding_cache(tmp_path_factory):
    # training runs started by tests (subprocesses inherit the environment) never write the shared cache in assets/
    old = os.environ.get("T2L_EMBEDDING_CACHE")
    os.environ["T2L_EMBEDDING_CACHE"] = str(tmp_path_factory.mktemp("embedding-cache"))
    yield
    if old is None:
        os.environ.pop("T2L_EMBEDDING_CACHE", None)
    else:
        os.environ["T2L_EMBEDDING_CACHE"] = old


def tiny_llama(path, model_dir, hidden=32, heads=4, kv_heads=2, seed=0):
    """A random 2-layer Llama with the real tokenizer files, saved in HF layout (transformers is test-only)."""
    import torch
    import transformers
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=49152, hidden_size=hidden, intermediate_size=2 * hidden,
                                   num_hidden_layers=2, num_attention_heads=heads, num_key_value_heads=kv_heads,
                                   max_position_embeddings=512, tie_word_embeddings=True)
    transformers.LlamaForCausalLM(cfg).save_pretrained(path)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        shutil.copy(model_dir / f, path / f)
    return path

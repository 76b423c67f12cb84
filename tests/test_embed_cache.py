"""The description-embedding cache: each description encoded once, shards that survive concurrent writers,
damage and a full disk, and a folder keyed by the base model's identity and dtype."""
import os

import pytest
import torch

import embed_cache
from tests.conftest import ROOT


def fake_encode(calls=None):
    def encode(texts):
        if calls is not None:
            calls.append(list(texts))
        return torch.stack([torch.full((4,), float(sum(map(ord, t)))) for t in texts])  # a function of the text
    return encode


def test_embedding_cache_encodes_each_description_once(tmp_path):
    calls = []
    cache = embed_cache.EmbeddingCache(fake_encode(calls), tag="fake")
    a = cache(["Do x", "Do y.", "Do x"])
    b = cache(["Do y", "Do z"])  # "Do y" is the same description as "Do y." once prepared
    assert calls == [["Do x.", "Do y."], ["Do z."]]
    assert a.shape == (3, 4) and torch.equal(a[0], a[2]) and torch.equal(b[0], a[1])
    folder = tmp_path / "emb"
    saved = embed_cache.EmbeddingCache(fake_encode(calls), folder, tag="fake")
    assert saved.fill(["Do x", "Do y", "Do z"], chunk=2) == 3 and len(calls) == 4  # chunks [x, y], [z]
    assert len(list(folder.glob("*.safetensors"))) == 2  # a shard per chunk, saved as soon as it is done
    again = embed_cache.EmbeddingCache(fake_encode(calls), folder, tag="fake")
    assert again.fill(["Do x", "Do y", "Do z"]) == 0 and len(calls) == 4
    assert torch.equal(again(["Do x", "Do y", "Do z"]), torch.cat([a[:2], b[1:]]))
    with pytest.raises(ValueError, match="encoder"):
        embed_cache.EmbeddingCache(fake_encode(), folder, tag="other")


WRITER = """
import sys, torch, embed_cache
folder, who = sys.argv[1], sys.argv[2]
encode = lambda ts: torch.stack([torch.full((4,), float(sum(map(ord, t)))) for t in ts])
texts = [f"shared text {i}" for i in range(60)] + [f"{who} text {i}" for i in range(60)]
embed_cache.EmbeddingCache(encode, folder, tag="fake").fill(texts, chunk=5)  # 24 shards, each written on its own
"""


def test_embedding_cache_concurrent_writers_lose_nothing(tmp_path):
    import subprocess
    import sys
    folder = tmp_path / "emb"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(folder), who], env=env) for who in ("a", "b")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    assert not [p for p in folder.iterdir() if not p.name.endswith(".safetensors")]  # no temporary files left
    calls = []
    merged = embed_cache.EmbeddingCache(fake_encode(calls), folder, tag="fake")
    texts = [f"shared text {i}" for i in range(60)] + [f"{w} text {i}" for w in "ab" for i in range(60)]  # end in a digit: no "." added
    assert set(merged.table) == set(texts)  # every entry of both writers
    torch.testing.assert_close(merged(texts), fake_encode()(texts), rtol=0, atol=0)
    assert calls == []


def test_embedding_cache_survives_damage_and_full_disk(tmp_path, monkeypatch):
    folder = tmp_path / "emb"
    embed_cache.EmbeddingCache(fake_encode(), folder, tag="fake").fill(["Do x", "Do y"])
    (folder / "00000000000000000000-1-dead.safetensors").write_bytes(b"half a header")  # e.g. copied in broken
    calls = []
    with pytest.warns(UserWarning, match="unreadable, ignored"):
        cache = embed_cache.EmbeddingCache(fake_encode(calls), folder, tag="fake")
    assert cache.fill(["Do x", "Do y", "Do z"]) == 1 and calls == [["Do z."]]

    def full_disk(tensors, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(embed_cache, "save_file", full_disk)
    before = sorted(os.listdir(folder))
    with pytest.warns(UserWarning, match="could not write the embedding cache"):
        cache(["Do w"])
        got = cache.save()
    assert got is None and sorted(os.listdir(folder)) == before  # no partial shard, no temporary file
    assert torch.equal(cache(["Do w"]), fake_encode()(["Do w."]))  # still served from memory


def test_cache_folder_is_keyed_by_model_identity_and_dtype(tmp_path):
    m = tmp_path / "SomeModel"
    m.mkdir()
    (m / "config.json").write_text('{"hidden_size": 8}')
    (m / "tokenizer.json").write_text("{}")
    (m / "model.safetensors").write_bytes(b"x" * 10)
    a = embed_cache.cache_folder("root", m, "bf16")
    assert a.startswith(os.path.join("root", "SomeModel-bf16-")) and a == embed_cache.cache_folder("root", m, "bf16")
    assert embed_cache.cache_folder("root", m, "fp32") != a
    seen = {a}
    for change in (lambda: (m / "config.json").write_text('{"hidden_size": 9}'),
                   lambda: (m / "tokenizer.json").write_text('{"a": 1}'),
                   lambda: os.utime(m / "model.safetensors", ns=(1, 1)),  # weights replaced: another mtime
                   lambda: (m / "model.safetensors").write_bytes(b"x" * 11)):
        change()
        seen.add(embed_cache.cache_folder("root", m, "bf16"))
    assert len(seen) == 5

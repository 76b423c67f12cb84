"""
The description-embedding cache: each task description is encoded by the base model once per base model
and dtype (t2l.embed_descriptions), kept on disk in append-only shards, and looked up by every training run
after that, so the encoder never runs in a training step (recipes.SFT fills it at set-up).
"""
import hashlib
import json
import os
import time
import warnings

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from t2l import atomic_write, prepare_description


def model_identity(model_dir):
    """A short hash of what decides a description's embedding: the contents of the config and tokenizer files
    and each weight file's name, size and mtime (hashing 500 MB of weights would cost more than it saves)."""
    h = hashlib.sha256()
    for name in sorted(os.listdir(model_dir)):
        p = os.path.join(model_dir, name)
        if name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
            with open(p, "rb") as f:
                h.update(name.encode() + b"\0" + f.read())
        elif name.endswith(".safetensors"):
            st = os.stat(p)
            h.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return h.hexdigest()[:12]


def cache_folder(root, model_dir, dtype):
    # one folder per base model and dtype: <root>/<model name>-<dtype>-<identity>
    return os.path.join(root, f"{os.path.basename(os.path.normpath(model_dir))}-{dtype}-{model_identity(model_dir)}")


class EmbeddingCache:
    """description -> embedding, so each description is encoded once per base model and dtype and the encoder
    never runs in the training step. `encode` is any function list[str] -> (N, dim), e.g.
    functools.partial(embed_descriptions, model, tokenizer); `tag` names the encoder.

    With a folder, entries persist as append-only shard files: a save writes only this process's new
    entries, to a fresh file under a unique name (temporary name, then os.replace). Runs that embed at the
    same time never overwrite or lose each other's entries, an interrupted write leaves no partial shard,
    and a shard that does not read back (damaged) is skipped with a warning: its entries are embedded again."""

    def __init__(self, encode, folder=None, tag=""):
        self.encode, self.folder, self.tag = encode, folder, tag
        self.table, self.unsaved, self.seen = {}, [], set()
        self.refresh()

    def refresh(self):
        """Read the shards written since the last look (by this process or any other)."""
        if self.folder is None or not os.path.isdir(self.folder):
            return
        for name in sorted(os.listdir(self.folder)):  # named by time: the oldest value of a key wins
            if not name.endswith(".safetensors") or name in self.seen:
                continue
            path = os.path.join(self.folder, name)
            try:
                with safe_open(path, framework="pt") as f:
                    info = f.metadata() or {}
                    texts, emb = json.loads(info["texts"]), f.get_tensor("embeddings")
            except Exception as e:  # safetensors raises several types for damaged files
                warnings.warn(f"embedding cache shard {path} is unreadable, ignored ({e})")
                self.seen.add(name)
                continue
            if info.get("tag", "") != self.tag:
                raise ValueError(f"embedding cache {path} was made by encoder '{info.get('tag')}', not '{self.tag}': delete it")
            self.seen.add(name)
            for t, e in zip(texts, emb):
                self.table.setdefault(t, e)

    def __call__(self, texts):
        keys = [prepare_description(t) for t in texts]
        missing = list(dict.fromkeys(k for k in keys if k not in self.table))  # unique, in order
        if missing:
            self.table.update(zip(missing, self.encode(missing)))
            self.unsaved += missing
        return torch.stack([self.table[k] for k in keys])  # (N, dim)

    def fill(self, texts, chunk=2048, log=None):
        """Make sure every text is in the table: the missing ones are encoded chunk by chunk, each chunk saved
        as soon as it is done (an interrupted run keeps what it embedded). -> number of texts encoded."""
        self.refresh()
        todo = list(dict.fromkeys(k for k in map(prepare_description, texts) if k not in self.table))
        t0, done = time.time(), 0
        for i in range(0, len(todo), chunk):
            self.refresh()  # another run may have embedded some of them meanwhile
            part = [k for k in todo[i:i + chunk] if k not in self.table]
            if part:
                self(part)
                self.save()
            done += len(part)
            if log:
                log(f"embedding descriptions: {min(i + chunk, len(todo))}/{len(todo)}, {time.time() - t0:.0f}s")
        return done

    def save(self):
        """Write the entries this process added since the last save as one new shard; -> its path or None.
        A failed write (e.g. a full disk) warns and keeps the entries in memory: the cache only saves time."""
        if self.folder is None or not self.unsaved:
            return None
        texts = self.unsaved
        emb = torch.stack([self.table[t] for t in texts]).contiguous()
        path = os.path.join(self.folder, f"{time.time_ns():020d}-{os.getpid()}-{os.urandom(4).hex()}.safetensors")
        try:
            os.makedirs(self.folder, exist_ok=True)
            atomic_write(path, lambda p: save_file({"embeddings": emb}, p, metadata={"texts": json.dumps(texts), "tag": self.tag}))
        except OSError as e:
            warnings.warn(f"could not write the embedding cache to {self.folder} ({e}); continuing without it")
            return None
        self.unsaved = []
        self.seen.add(os.path.basename(path))
        return path

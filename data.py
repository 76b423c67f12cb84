"""
Data for t2l: the chat tokenizer, the seven multiple-choice benchmarks of the paper, GSM8K, and the
Super-NaturalInstructions (SNI) task files the hypernetwork is trained on and evaluated with.

Every item can be rendered two ways:
  mc_item     the Text-to-LoRA paper's user-turn prompt (T2L_NOTES section 7, the reference's
              templates) and the answer strings the model must produce ("A".., "0".., "true"/"false").
  cloze_item  lm-evaluation-harness's plain-text contexts and continuations, so a log-likelihood
              score here is comparable with published lm-eval numbers.

The files are written by `python prepare.py`; this module only reads them:
  <data_dir>/benchmarks/<task>/<split>.jsonl, <data_dir>/sni/<name>.json,
  <data_dir>/tasks/{splits.json, eval_descriptions.json, descriptions/<name>.json}

    python data.py arc_easy            # print the first item of a task in both renderings
"""
import argparse
import gzip
import json
import os
import re
import sys

# --------------------------------------------------------------------------------------------
# tokenizer


class Parser(argparse.ArgumentParser):
    """argparse for every t2l command line: a bad argument is one `error:` line, not a usage block."""

    def error(self, message):
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


class Tokenizer:
    """tokenizer.json (HF `tokenizers`) + tokenizer_config.json (special tokens, jinja chat template)."""

    def __init__(self, model_dir):
        from tokenizers import Tokenizer as HFTokenizer

        paths = [os.path.join(model_dir, f) for f in ("tokenizer.json", "tokenizer_config.json")]
        for p in paths:
            if not os.path.isfile(p):
                raise FileNotFoundError(f"{p} not found: run `python prepare.py` or pass a Hugging Face model folder")
        self.tok = HFTokenizer.from_file(paths[0])
        with open(paths[1]) as f:
            self.config = json.load(f)
        template = self.config.get("chat_template")
        jinja_file = os.path.join(model_dir, "chat_template.jinja")  # newer transformers save it on its own
        if template is None and os.path.isfile(jinja_file):
            with open(jinja_file) as f:
                template = f.read()
        if isinstance(template, list):  # a list of named templates: take the default one
            template = {t["name"]: t["template"] for t in template}.get("default")
        self.chat_template = template
        self.special = {k: self._token(k) for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
        self.eos_id = self.tok.token_to_id(self.special["eos_token"]) if self.special["eos_token"] else None
        pad = self.special["pad_token"]
        # no pad token: reuse eos; padded positions are masked out, so the id itself never matters
        self.pad_id = self.tok.token_to_id(pad) if pad else self.eos_id
        self._render = None

    def _token(self, key):
        t = self.config.get(key)
        return t.get("content") if isinstance(t, dict) else t  # an AddedToken dict or a plain string

    def encode(self, text):
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids, skip_special_tokens=False):
        return self.tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def chat(self, messages, add_generation_prompt=True):
        if self._render is None:
            if not self.chat_template:
                raise ValueError("tokenizer_config.json has no chat_template; use an instruction-tuned model")
            self._render = compile_chat_template(self.chat_template)
        return self._render(messages=messages, add_generation_prompt=add_generation_prompt,
                            **{k: v for k, v in self.special.items() if v is not None})


def lm_eval_encode(tok, context, continuation):
    """(context ids, continuation ids) as lm-evaluation-harness splits them: trailing spaces of the context move
    to the continuation, whose tokens are those of the whole string after the context's own tokens."""
    n = len(context) - len(context.rstrip(" "))
    if n:
        context, continuation = context[:-n], context[-n:] + continuation
    ctx = tok.encode(context)
    return ctx, tok.encode(context + continuation)[len(ctx):]


def compile_chat_template(template):
    # the same jinja settings transformers uses, so the rendered string is byte-identical
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = lambda x, indent=None: json.dumps(x, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render


# --------------------------------------------------------------------------------------------
# benchmarks

TASKS = ("arc_easy", "arc_challenge", "boolq", "hellaswag", "openbookqa", "piqa", "winogrande")
# the paper's evaluation splits (T2L_NOTES section 7)
SPLITS = {"arc_easy": "test", "arc_challenge": "test", "boolq": "validation", "hellaswag": "validation",
          "openbookqa": "test", "piqa": "validation", "winogrande": "validation"}
SIZES = {"arc_easy": 2376, "arc_challenge": 1172, "boolq": 3270, "hellaswag": 10042, "openbookqa": 500,
         "piqa": 1838, "winogrande": 1267}
# the fields each benchmark line must have (Hugging Face `datasets` column names)
FIELDS = {
    "arc_easy": ("question", "choices", "answerKey"),
    "arc_challenge": ("question", "choices", "answerKey"),
    "openbookqa": ("question_stem", "choices", "answerKey"),
    "boolq": ("question", "answer", "passage"),
    "hellaswag": ("activity_label", "ctx_a", "ctx_b", "ctx", "endings", "label"),
    "piqa": ("goal", "sol1", "sol2", "label"),
    "winogrande": ("sentence", "option1", "option2", "answer"),
    "gsm8k": ("question", "answer"),
    "humaneval": ("task_id", "prompt", "entry_point", "canonical_solution", "test"),
    "mbpp": ("task_id", "prompt", "code", "test_list"),
}
LETTERS = "ABCDEFGHIJ"


def answer_index(doc):
    # ARC labels are usually "A".."E" but some items use "1".."5"; either way the prompt shows
    # letters in the order given, so the gold index is the answerKey's position among the labels
    labels, key = doc["choices"]["label"], str(doc["answerKey"]).strip()
    return labels.index(key) if key in labels else None


def problem(task, doc):
    """Why `doc` is not a usable item of `task` (a short reason), or None when it is fine."""
    if not isinstance(doc, dict):
        return "not a JSON object"
    missing = [k for k in FIELDS.get(task, ()) if k not in doc]
    if missing:
        return f"missing field(s) {', '.join(missing)}"
    if task in ("arc_easy", "arc_challenge", "openbookqa"):
        c = doc["choices"]
        if not (isinstance(c, dict) and isinstance(c.get("text"), list) and isinstance(c.get("label"), list)
                and 2 <= len(c["text"]) == len(c["label"]) <= len(LETTERS)):
            return "choices must hold 'text' and 'label' lists of the same length (2 to 10)"
        if answer_index(doc) is None:
            return f"answerKey {doc['answerKey']!r} is not one of the labels {c['label']}"
    if task == "boolq" and not isinstance(doc["answer"], bool):
        return "answer must be true or false"
    if task == "hellaswag" and (len(doc["endings"]) != 4 or str(doc["label"]) not in ("0", "1", "2", "3")):
        return "needs 4 endings and a label '0'..'3'"
    if task == "piqa" and str(doc["label"]) not in ("0", "1"):
        return "label must be 0 or 1"
    if task == "winogrande" and (str(doc["answer"]) not in ("1", "2") or "_" not in doc["sentence"]):
        return "answer must be '1' or '2' and the sentence must contain '_'"
    return None


def read_jsonl(path, task=None, limit=None):
    """One dict per line; a bad line raises ValueError("path:line: reason")."""
    docs = []
    with (gzip.open if path.endswith(".gz") else open)(path, "rt", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if limit is not None and len(docs) >= limit:
                break
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            why = problem(task, doc) if task else (None if isinstance(doc, dict) else "not a JSON object")
            if why:
                raise ValueError(f"{path}:{n}: {why}")
            docs.append(doc)
    return docs


def benchmark_path(task, data_dir):
    if task not in SPLITS:
        raise ValueError(f"unknown task '{task}' (choose from {', '.join(TASKS)})")
    return os.path.join(data_dir, "benchmarks", task, SPLITS[task] + ".jsonl")


# the benchmarks with a training split (for LoRA training; the others have evaluation splits only)
TRAIN_TASKS = ("arc_easy", "arc_challenge", "openbookqa", "piqa", "winogrande", "gsm8k")


def load_train_split(task, data_dir):
    if task not in TRAIN_TASKS:
        raise ValueError(f"{task} has no training split (the benchmarks with one: {', '.join(TRAIN_TASKS)})")
    path = os.path.join(data_dir, "benchmarks", task, "train.jsonl")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: run `python prepare.py` (or pass --data DIR)")
    return read_jsonl(path, task)


def load_benchmark(task, data_dir, limit=None):
    path = benchmark_path(task, data_dir)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: run `python prepare.py` (or pass --data DIR)")
    return read_jsonl(path, task, limit)


def choice_lines(labels, texts):
    return "\n".join(f"{lab}: {text}" for lab, text in zip(labels, texts))


def mc_item(task, doc):
    """(user_text, labels, gold): the paper's prompt, the answer strings, the index of the right one."""
    if task in ("arc_easy", "arc_challenge", "openbookqa"):
        texts = doc["choices"]["text"]
        labels = list(LETTERS[:len(texts)])
        choices = choice_lines(labels, texts)
        if task == "openbookqa":
            user = ("Complete the following passage or answer the question by choosing the correct choice.\n\n"
                    f"{doc['question_stem']}\n\n{choices}\n\n"
                    f"You must respond with the letter corresponding to the correct choice ({','.join(labels)}) "
                    "without any explanation.")
        else:
            user = ("Answer the question below by choosing the correct choice.\n\n"
                    f"{doc['question']}\n\n{choices}\n\n"
                    "You must respond with the letter corresponding to the correct choice without any explanation.")
        return user, labels, answer_index(doc)
    if task == "boolq":
        user = (f"{doc['passage']}\n\nQuestion: {doc['question']}?\n\n"
                "Please answer with either `true` or `false` without any explanation.")
        return user, ["true", "false"], 0 if doc["answer"] else 1
    if task == "hellaswag":
        labels = ["0", "1", "2", "3"]
        user = ("You are provided with an incomplete passage below as well as 4 choices of continuation with only "
                "one of them being the correct ending. Treat the endings as being labelled 0, 1, 2, 3 in order.\n\n"
                f"Passage: {doc['ctx']}\n\n{choice_lines(labels, doc['endings'])}\n\n"
                "You must respond with the only number corresponding to the correct ending (0,1,2,3) for the passage "
                "without any explanation.")
        return user, labels, int(doc["label"])
    if task == "piqa":
        user = ("Choose the option that either answers the question, completes the sentence, or solves the problem. "
                "Pay attention to the properties of the objects in the question and how they interact with each "
                "other. If both options are correct, choose the one that is more convenient or more common.\n\n"
                f'"""{doc["goal"]}"""\n\n0: {doc["sol1"]}\n1: {doc["sol2"]}\n\n'
                "You must respond with either `0` or `1` without any explanation.")
        return user, ["0", "1"], int(doc["label"])
    if task == "winogrande":
        user = (f"Given the following situation:\n\n{doc['sentence']}\n\nWhich option is correct?\n\n"
                f"Option 1: {doc['option1']}\n\nOption 2: {doc['option2']}\n\n"
                "You must respond with either `1` or `2` without any explanation.")
        return user, ["1", "2"], int(doc["answer"]) - 1
    raise ValueError(f"unknown task '{task}' (choose from {', '.join(TASKS)})")


def hellaswag_preprocess(text):
    # lm-eval's cleanup: WikiHow items carry "[title]", "[step]", "[header]" ... markers
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def cloze_item(task, doc):
    """(contexts, continuations, gold, lengths) as lm-evaluation-harness builds them (no chat template).

    Choice i is scored as log p(continuations[i] | contexts[i]). Every task has one context repeated
    n times, except Winogrande (partial scoring: the option goes into the context and the shared
    continuation is the rest of the sentence). lengths[i] = len(choice text) in characters without the
    leading space, for acc_norm = loglik / length; None for the tasks lm-eval reports no acc_norm for
    (boolq, winogrande)."""
    if task in ("arc_easy", "arc_challenge", "openbookqa", "piqa", "hellaswag"):
        if task == "openbookqa":
            context, choices, gold = doc["question_stem"], doc["choices"]["text"], answer_index(doc)
        elif task == "piqa":
            context, choices, gold = f"Question: {doc['goal']}\nAnswer:", [doc["sol1"], doc["sol2"]], int(doc["label"])
        elif task == "hellaswag":
            ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
            context = hellaswag_preprocess(doc["activity_label"] + ": " + ctx)
            choices, gold = [hellaswag_preprocess(e) for e in doc["endings"]], int(doc["label"])
        else:
            context, choices, gold = f"Question: {doc['question']}\nAnswer:", doc["choices"]["text"], answer_index(doc)
        return [context] * len(choices), [" " + c for c in choices], gold, [len(c) for c in choices]
    if task == "boolq":
        context = f"{doc['passage']}\nQuestion: {doc['question']}?\nAnswer:"
        return [context] * 2, [" no", " yes"], int(doc["answer"]), None
    if task == "winogrande":
        i = doc["sentence"].index("_")
        rest = " " + doc["sentence"][i + 1:].strip()
        contexts = [doc["sentence"][:i] + doc["option1"], doc["sentence"][:i] + doc["option2"]]
        return contexts, [rest, rest], int(doc["answer"]) - 1, None
    raise ValueError(f"unknown task '{task}' (choose from {', '.join(TASKS)})")


# --------------------------------------------------------------------------------------------
# Super-NaturalInstructions tasks and their descriptions


def read_json(path, what):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: run `python prepare.py` to get the {what}")
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None


def load_sni_task(path):
    """{"name", "definition", "instances": [(input, first output), ...]} from one SNI task file."""
    d = read_json(path, "SNI task files")
    try:
        definition = d["definition"][0] if isinstance(d["definition"], list) else d["definition"]
        instances = [(x["input"], x["output"][0] if isinstance(x["output"], list) else x["output"])
                     for x in d["instances"] if x.get("output")]
    except (KeyError, TypeError, IndexError):
        raise ValueError(f"{path}: not an SNI task file (needs 'definition' and 'instances' with input/output)") from None
    name = d.get("name") or os.path.splitext(os.path.basename(path))[0]
    return {"name": name, "definition": definition, "instances": instances}


def load_sni_eval(path):
    """{"name", "definition", "instances": [{"id", "input", "outputs": [every reference]}]} for scoring by
    generation: SNI instances list several acceptable outputs, and the benchmark scores against all of them.
    Unlike load_sni_task (training), a malformed instance is an error, not skipped."""
    d = read_json(path, "SNI task files")
    if not isinstance(d, dict) or "definition" not in d:
        raise ValueError(f"{path}: not an SNI task file (needs 'definition' and 'instances')")
    definition = d["definition"][0] if isinstance(d["definition"], list) and d["definition"] else d["definition"]
    if not isinstance(definition, str) or not definition.strip():
        raise ValueError(f"{path}: 'definition' must be a non-empty string (or a list of them)")
    if not isinstance(d.get("instances"), list) or not d["instances"]:
        raise ValueError(f"{path}: the task has no instances")
    instances = []
    for n, x in enumerate(d["instances"]):
        where = f"{path}: instance {n}" + (f" ({x['id']})" if isinstance(x, dict) and "id" in x else "")
        if not isinstance(x, dict) or not isinstance(x.get("input"), str):
            raise ValueError(f"{where} has no 'input' string")
        outputs = x.get("output")
        outputs = [outputs] if isinstance(outputs, str) else outputs
        if not isinstance(outputs, list) or not outputs or not all(isinstance(o, str) for o in outputs):
            raise ValueError(f"{where} has no 'output' (a string or a non-empty list of strings)")
        instances.append({"id": str(x.get("id", n)), "input": x["input"], "outputs": outputs})
    name = d.get("name") or os.path.splitext(os.path.basename(path))[0]
    return {"name": name, "definition": definition, "instances": instances}


def sni_prompt(definition, input):
    # the reference's SNI user turn (T2L_NOTES section 5)
    return f"{definition} Please complete the task without any explanation.\n\n{input}"


# GSM8K (T2L_NOTES section 7): the paper's user turn, and the assistant turn prefilled with its first words
GSM8K_PREFILL = "Let's think step by step."


def gsm8k_user(question):
    return f"Please answer the following question: {question}\n\n"


def load_gsm8k(data_dir, limit=None):
    path = os.path.join(data_dir, "benchmarks", "gsm8k", "test.jsonl")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: run `python prepare.py` (or pass --data DIR)")
    return path, read_jsonl(path, "gsm8k", limit)


def load_splits(data_dir):
    """{"train": [479 names], "heldout": [11], "all_sni": [500], "lol_to_sni": {...}}"""
    return read_json(os.path.join(data_dir, "tasks", "splits.json"), "task splits")


def load_descriptions(data_dir, name):
    """The ~200 generated descriptions of one SNI task or benchmark."""
    return read_json(os.path.join(data_dir, "tasks", "descriptions", name + ".json"), "task descriptions")["descriptions"]


def load_eval_descriptions(data_dir):
    """{"eval_descriptions": {name: [3 held-out descriptions]}, "nonsense_descriptions": [...]}"""
    return read_json(os.path.join(data_dir, "tasks", "eval_descriptions.json"), "evaluation descriptions")


# --------------------------------------------------------------------------------------------
# training examples: each is (token ids, n_prompt), the loss going on ids[n_prompt:]

def encode_example(tok, user, response, max_len, prefill=""):
    """The chat-templated user turn (+ the assistant's prefilled first words) followed by the response."""
    messages = [{"role": "user", "content": user}]
    prompt = tok.chat(messages) + prefill
    full = tok.chat(messages + [{"role": "assistant", "content": prefill + response}], add_generation_prompt=False)
    assert full.startswith(prompt), "chat template does not extend the prompt with the response"
    p, t = tok.encode(prompt), tok.encode(full[len(prompt):])  # response incl. the end-of-turn token
    t = t[:max_len // 2]
    if len(p) + len(t) > max_len:  # keep the head (definition) and the tail (input end, assistant header)
        keep = max_len - len(t)
        p = p[:keep // 2] + p[len(p) - (keep - keep // 2):]
    return p + t, len(p)


def benchmark_examples(tok, data_dir, task, max_len, scoring="cloze"):
    """A benchmark's training split rendered the way its evaluation reads it: in cloze, lm-eval's plain context
    and the right continuation (no chat template); in mc, the paper's prompt and the answer string; GSM8K in
    its chat prompt, the worked solution (calculator notes removed) after the prefilled first words."""
    examples = []
    for doc in load_train_split(task, data_dir):
        if task == "gsm8k":
            solution = re.sub(r"<<[^>]*>>", "", doc["answer"])
            examples.append(encode_example(tok, gsm8k_user(doc["question"]), " " + solution, max_len, GSM8K_PREFILL))
        elif scoring == "cloze":
            contexts, continuations, gold, _ = cloze_item(task, doc)
            ctx, cont = lm_eval_encode(tok, contexts[gold], continuations[gold])
            ctx = ctx[max(0, len(ctx) + len(cont) - max_len):]  # a long context loses its start
            examples.append((ctx + cont, len(ctx)))
        else:
            user, labels, gold = mc_item(task, doc)
            examples.append(encode_example(tok, user, labels[gold], max_len))
    return examples


def sni_examples(tok, data_dir, name, max_len):
    task = load_sni_task(os.path.join(data_dir, "sni", name + ".json"))
    return [encode_example(tok, sni_prompt(task["definition"], i), o, max_len) for i, o in task["instances"]]


def load_tasks(tok, data_dir, names, max_len, n_desc):
    """{task: (examples [(ids, n_prompt)], descriptions [str])} for the SNI tasks present in data_dir."""
    return {name: (sni_examples(tok, data_dir, name, max_len), load_descriptions(data_dir, name)[:n_desc] if n_desc else [])
            for name in names if os.path.isfile(os.path.join(data_dir, "sni", name + ".json"))}


def task_names(spec, data_dir):
    """--tasks: a comma list of benchmarks with a training split and SNI task names; `sni` is every SNI training
    task present, `sni:N` the first N of them (sorted by name)."""
    splits, names = load_splits(data_dir), []
    present = sorted(t for t in splits["train"] if os.path.isfile(os.path.join(data_dir, "sni", t + ".json")))
    for item in (x.strip() for x in spec.split(",")):
        if item == "sni" or item.startswith("sni:"):
            n = item[4:]
            if n and not (n.isdigit() and int(n) > 0):
                raise ValueError(f"--tasks {item}: write sni:N with N a positive number")
            names += present[:int(n)] if n else present
        elif item in TASKS and item not in TRAIN_TASKS:
            raise ValueError(f"{item} has no training split (the benchmarks with one: {', '.join(TRAIN_TASKS)})")
        elif item in TRAIN_TASKS or os.path.isfile(os.path.join(data_dir, "sni", item + ".json")):
            names.append(item)
        else:
            raise ValueError(f"unknown task '{item}': not a benchmark with a training split ({', '.join(TRAIN_TASKS)}), "
                             f"nor an SNI task file in {data_dir}/sni, nor 'sni' / 'sni:N'")
    if not names:
        raise ValueError(f"--tasks {spec}: no task found (no SNI training task file in {data_dir}/sni?)")
    return list(dict.fromkeys(names))



if __name__ == "__main__":
    task = sys.argv[1] if len(sys.argv) > 1 else "arc_easy"
    data_dir = sys.argv[2] if len(sys.argv) > 2 else "assets/data"
    try:
        doc = load_benchmark(task, data_dir, limit=1)[0]
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    user, labels, gold = mc_item(task, doc)
    print(f"--- mc user turn (answers {labels}, gold {labels[gold]!r}) ---\n{user}\n")
    contexts, conts, gold, lengths = cloze_item(task, doc)
    print(f"--- cloze (gold {gold}, lengths {lengths}) ---")
    for c, k in zip(contexts, conts):
        print(f"{c!r} + {k!r}")

"""data.py: the paper's prompts and lm-eval's cloze items written out in full for fixture items, loader
errors, and the chat tokenizer against transformers' apply_chat_template."""
import json

import pytest

from data import (SIZES, TASKS, Tokenizer, cloze_item, hellaswag_preprocess, load_benchmark, load_descriptions,
                  load_eval_descriptions, load_sni_task, load_splits, mc_item, sni_prompt)
from tests.conftest import FIXTURES

DATA = str(FIXTURES / "shared")


def first(task, i=0):
    return load_benchmark(task, DATA)[i]


# ---------------------------------------------------------------- the paper's prompts (mc)

ARC_TAIL = "You must respond with the letter corresponding to the correct choice without any explanation."


def test_mc_arc_easy():
    user, labels, gold = mc_item("arc_easy", first("arc_easy"))
    assert user == (
        "Answer the question below by choosing the correct choice.\n\n"
        "Which statement best explains why photosynthesis is the foundation of most food webs?\n\n"
        "A: Sunlight is the source of energy for nearly all ecosystems.\n"
        "B: Most ecosystems are found on land instead of in water.\n"
        "C: Carbon dioxide is more available than other gases.\n"
        "D: The producers in all ecosystems are plants.\n\n" + ARC_TAIL)
    assert (labels, gold) == (["A", "B", "C", "D"], 0)


def test_mc_arc_challenge():
    user, labels, gold = mc_item("arc_challenge", first("arc_challenge"))
    assert user == (
        "Answer the question below by choosing the correct choice.\n\n"
        "An astronomer observes that a planet rotates faster after a meteorite impact. "
        "Which is the most likely effect of this increase in rotation?\n\n"
        "A: Planetary density will decrease.\nB: Planetary years will become longer.\n"
        "C: Planetary days will become shorter.\nD: Planetary gravity will become stronger.\n\n" + ARC_TAIL)
    assert (labels, gold) == (["A", "B", "C", "D"], 2)


def test_mc_arc_three_and_five_choices():
    user, labels, gold = mc_item("arc_easy", first("arc_easy", 1))
    assert user == (
        "Answer the question below by choosing the correct choice.\n\n"
        "When a rock is placed in a graduated cylinder containing water, the height of the water will\n\n"
        "A: decrease\nB: increase\nC: remain the same\n\n" + ARC_TAIL)
    assert (labels, gold) == (["A", "B", "C"], 1)
    user, labels, gold = mc_item("arc_easy", first("arc_easy", 2))
    assert user == (
        "Answer the question below by choosing the correct choice.\n\n"
        "What gas in the air do we need to breathe in order to live?\n\n"
        "A: nitrogen\nB: oxygen\nC: carbon dioxide\nD: hydrogen\nE: water vapor\n\n" + ARC_TAIL)
    assert (labels, gold) == (["A", "B", "C", "D", "E"], 1)


def test_mc_arc_numeric_answer_key():
    # labels "1".."4", answerKey "3": shown as letters, gold is the third choice ("C")
    doc = first("arc_easy", 3)
    assert doc["choices"]["label"] == ["1", "2", "3", "4"] and doc["answerKey"] == "3"
    user, labels, gold = mc_item("arc_easy", doc)
    assert user == (
        "Answer the question below by choosing the correct choice.\n\n"
        "The force of gravitational attraction between two objects depends on the distance between the objects "
        "and their\n\nA: buoyancies\nB: temperatures\nC: masses\nD: shapes\n\n" + ARC_TAIL)
    assert (labels, gold) == (["A", "B", "C", "D"], 2)
    contexts, conts, gold, lengths = cloze_item("arc_easy", doc)
    assert gold == 2 and conts[gold] == " masses"


def test_mc_openbookqa():
    user, labels, gold = mc_item("openbookqa", first("openbookqa"))
    assert user == (
        "Complete the following passage or answer the question by choosing the correct choice.\n\n"
        "Predators eat\n\nA: lions\nB: humans\nC: bunnies\nD: grass\n\n"
        "You must respond with the letter corresponding to the correct choice (A,B,C,D) without any explanation.")
    assert (labels, gold) == (["A", "B", "C", "D"], 2)


def test_mc_boolq():
    user, labels, gold = mc_item("boolq", first("boolq"))
    assert user == ("The season is set for release in 2019.\n\nQuestion: are they going to make a punisher season 2?\n\n"
                    "Please answer with either `true` or `false` without any explanation.")
    assert (labels, gold) == (["true", "false"], 0)
    assert mc_item("boolq", first("boolq", 1))[2] == 1  # answer false -> "false"


def test_mc_hellaswag():
    user, labels, gold = mc_item("hellaswag", first("hellaswag"))
    assert user == (
        "You are provided with an incomplete passage below as well as 4 choices of continuation with only one of "
        "them being the correct ending. Treat the endings as being labelled 0, 1, 2, 3 in order.\n\n"
        "Passage: A man is sitting on a roof. he\n\n"
        "0: is using wrap to wrap a pair of skis.\n1: is ripping level tiles off.\n"
        "2: is holding a rubik's cube.\n3: starts pulling up roofing on a roof.\n\n"
        "You must respond with the only number corresponding to the correct ending (0,1,2,3) for the passage "
        "without any explanation.")
    assert (labels, gold) == (["0", "1", "2", "3"], 3)


def test_mc_piqa():
    user, labels, gold = mc_item("piqa", first("piqa", 1))
    assert user == (
        "Choose the option that either answers the question, completes the sentence, or solves the problem. "
        "Pay attention to the properties of the objects in the question and how they interact with each other. "
        "If both options are correct, choose the one that is more convenient or more common.\n\n"
        '"""fist"""\n\n0: grips house \n1: grips spoon \n\n'
        "You must respond with either `0` or `1` without any explanation.")
    assert (labels, gold) == (["0", "1"], 1)


def test_mc_winogrande():
    user, labels, gold = mc_item("winogrande", first("winogrande"))
    assert user == (
        "Given the following situation:\n\n"
        "Sarah was a much better surgeon than Maria so _ always got the easier cases.\n\n"
        "Which option is correct?\n\nOption 1: Sarah\n\nOption 2: Maria\n\n"
        "You must respond with either `1` or `2` without any explanation.")
    assert (labels, gold) == (["1", "2"], 1)


# ---------------------------------------------------------------- lm-evaluation-harness items (cloze)


def test_cloze_arc_and_openbookqa():
    contexts, conts, gold, lengths = cloze_item("arc_easy", first("arc_easy", 1))
    q = "Question: When a rock is placed in a graduated cylinder containing water, the height of the water will\nAnswer:"
    assert contexts == [q] * 3
    assert conts == [" decrease", " increase", " remain the same"]
    assert (gold, lengths) == (1, [8, 8, 15])  # acc_norm divides by the choice's characters, without the space
    contexts, conts, gold, lengths = cloze_item("openbookqa", first("openbookqa", 1))
    assert contexts == ["Owls are likely to hunt at"] * 4  # lm-eval: the bare question_stem
    assert (conts, gold, lengths) == ([" 3pm", " 2am", " 6pm", " 7am"], 1, [3, 3, 3, 3])


def test_cloze_boolq():
    contexts, conts, gold, lengths = cloze_item("boolq", first("boolq", 1))
    assert contexts == ["The sixth and final season premiered on 19 August 2018.\n"
                        "Question: is a place to call home finished for good?\nAnswer:"] * 2
    assert (conts, gold, lengths) == ([" no", " yes"], 0, None)
    assert cloze_item("boolq", first("boolq"))[2] == 1  # true -> " yes"


def test_cloze_piqa():
    contexts, conts, gold, lengths = cloze_item("piqa", first("piqa"))
    assert contexts == ["Question: laser\nAnswer:"] * 2
    assert (conts, gold, lengths) == ([" burns face ", " burns air "], 0, [11, 10])


def test_cloze_hellaswag():
    contexts, conts, gold, lengths = cloze_item("hellaswag", first("hellaswag"))
    assert contexts == ["Roof shingle removal: A man is sitting on a roof. He"] * 4  # ctx_b capitalized
    assert conts == [" is using wrap to wrap a pair of skis.", " is ripping level tiles off.",
                     " is holding a rubik's cube.", " starts pulling up roofing on a roof."]
    assert gold == 3 and lengths == [len(c) - 1 for c in conts]


def test_hellaswag_preprocess():
    # WikiHow items: " [title]" becomes ". ", other [markers] go, double spaces collapse (lm-eval's cleanup,
    # including its quirks: "boil.." and the leading space an ending keeps when it starts with a marker)
    doc = first("hellaswag", 1)
    contexts, conts, gold, lengths = cloze_item("hellaswag", doc)
    assert contexts[0] == ("Relationships: How to make rasgullas. Heat the milk and bring to boil.. "
                           "Cool the milk for a couple of hours. Remove the cream layer.")
    assert conts[1] == "  Reheat the milk and bring to a boil.. Add the citric acid dissolved in some water."
    assert conts[3] == (" Whisk in the cream of your choice and heat a little on both sides until it thickens.. "
                        "Combine the sugar and water in a small saucepan.")
    assert gold == 1 and lengths[1] == len(conts[1]) - 1
    assert hellaswag_preprocess("  a [step] b [title] c ") == "a b. c"


def test_cloze_winogrande_partial():
    # partial scoring: the option goes into the context, the rest of the sentence is the shared continuation
    contexts, conts, gold, lengths = cloze_item("winogrande", first("winogrande"))
    assert contexts == ["Sarah was a much better surgeon than Maria so Sarah",
                        "Sarah was a much better surgeon than Maria so Maria"]
    assert conts == [" always got the easier cases."] * 2
    assert (gold, lengths) == (1, None)
    assert cloze_item("winogrande", first("winogrande", 1))[2] == 0


def test_every_fixture_item_renders_consistently():
    for task in TASKS:
        for doc in load_benchmark(task, DATA):
            user, labels, gold = mc_item(task, doc)
            contexts, conts, cgold, lengths = cloze_item(task, doc)
            # same gold answer both ways (boolq lists "true" first for mc but " no" first, as lm-eval does)
            assert 0 <= gold < len(labels) and gold == (1 - cgold if task == "boolq" else cgold)
            assert len(contexts) == len(conts) == len(labels)
            assert lengths is None or len(lengths) == len(conts)


# ---------------------------------------------------------------- loading


def test_limit_and_unknown_task():
    assert len(load_benchmark("arc_easy", DATA)) == 4
    assert [d["id"] for d in load_benchmark("arc_easy", DATA, limit=2)] == ["Mercury_417466", "NYSEDREGENTS_2008_4_6"]
    with pytest.raises(ValueError, match="unknown task 'mmlu'.*arc_easy, arc_challenge, boolq, hellaswag"):
        load_benchmark("mmlu", DATA)
    with pytest.raises(ValueError, match="unknown task"):
        mc_item("mmlu", {})


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"benchmarks/piqa/validation.jsonl not found: run `python prepare.py`"):
        load_benchmark("piqa", tmp_path)


@pytest.mark.parametrize("line,reason", [
    ('{"goal": "a", "sol1": "b"', "not valid JSON"),
    ('{"goal": "a", "sol1": "b", "label": 0}', "missing field(s) sol2"),
    ('{"goal": "a", "sol1": "b", "sol2": "c", "label": 2}', "label must be 0 or 1"),
    ('[1, 2]', "not a JSON object"),
])
def test_malformed_line(tmp_path, line, reason):
    path = tmp_path / "benchmarks" / "piqa" / "validation.jsonl"
    path.parent.mkdir(parents=True)
    good = '{"goal": "g", "sol1": "s1", "sol2": "s2", "label": 1}'
    path.write_text(f"{good}\n\n{line}\n{good}\n")
    with pytest.raises(ValueError) as e:
        load_benchmark("piqa", tmp_path)
    assert str(e.value).startswith(f"{path}:3: {reason}")
    assert len(load_benchmark("piqa", tmp_path, limit=1)) == 1  # the bad line is never read


def test_arc_answer_key_not_a_label(tmp_path):
    path = tmp_path / "benchmarks" / "arc_easy" / "test.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"question": "q", "choices": {"text": ["a", "b"], "label": ["A", "B"]},
                                "answerKey": "C"}) + "\n")
    with pytest.raises(ValueError, match=r"test.jsonl:1: answerKey 'C' is not one of the labels"):
        load_benchmark("arc_easy", tmp_path)


# ---------------------------------------------------------------- SNI and descriptions


def test_sni_task_and_prompt():
    t = load_sni_task(FIXTURES / "shared" / "sni" / "task9001_tiny_reverse_words.json")
    assert t["name"] == "task9001_tiny_reverse_words"
    assert t["instances"] == [("red green blue", "blue green red"), ("one two", "two one")]  # first output only
    assert sni_prompt(t["definition"], "a b") == ("In this task, you are given a sentence. Reverse the order of its "
                                                  "words. Please complete the task without any explanation.\n\na b")


def test_sni_definition_as_list(tmp_path):
    # the upstream SNI files store the definition as a one-element list
    p = tmp_path / "t.json"
    p.write_text(json.dumps({"definition": ["Do it."], "instances": [{"input": "x", "output": ["y"]}]}))
    assert load_sni_task(p) == {"name": "t", "definition": "Do it.", "instances": [("x", "y")]}
    p.write_text(json.dumps({"instances": []}))
    with pytest.raises(ValueError, match="not an SNI task file"):
        load_sni_task(p)


def test_splits_and_descriptions():
    assert load_splits(DATA)["heldout"] == ["task9003_tiny_heldout"]
    assert load_descriptions(DATA, "arc_easy") == ["Answer multiple-choice science questions from grade-school exams."]
    assert len(load_eval_descriptions(DATA)["eval_descriptions"]["arc_easy"]) == 3
    with pytest.raises(FileNotFoundError, match="nope.json not found"):
        load_descriptions(DATA, "nope")


# ---------------------------------------------------------------- tokenizer

CHATML = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\nYou are a helpful AI assistant<|im_end|>\n' }}{% endif %}"
          "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
# exercises what transformers adds to jinja: bos_token, raise_exception, tojson, trim_blocks/lstrip_blocks
FANCY = ("{{ bos_token }}\n{% for m in messages %}\n  {% if m['role'] not in ['user', 'assistant', 'system'] %}"
         "{{ raise_exception('bad role') }}{% endif %}\n"
         "  [{{ m['role'] }}] {{ m['content'] | tojson }}\n{% endfor %}\n"
         "{% if add_generation_prompt %}[assistant]{% endif %}")


def tiny_tokenizer(path, template):
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers

    words = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "hello", "world", "user", "assistant", "system", "\n", "é"]
    tok = HFTokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tok.save(str(path / "tokenizer.json"))
    cfg = {"chat_template": template, "bos_token": "<|im_start|>", "eos_token": {"content": "<|im_end|>"},
           "pad_token": None, "unk_token": "<|endoftext|>", "tokenizer_class": "PreTrainedTokenizerFast"}
    (path / "tokenizer_config.json").write_text(json.dumps(cfg))


MESSAGES = [[{"role": "user", "content": "hello world"}],
            [{"role": "system", "content": "be \"brief\" é"}, {"role": "user", "content": "hello"},
             {"role": "assistant", "content": "world"}, {"role": "user", "content": "hello <b>&"}]]


@pytest.mark.parametrize("template", [CHATML, FANCY], ids=["chatml", "fancy"])
def test_chat_matches_transformers(tmp_path, template):
    transformers = pytest.importorskip("transformers")
    tiny_tokenizer(tmp_path, template)
    ours = Tokenizer(tmp_path)
    ref = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"), chat_template=template,
                                               bos_token="<|im_start|>", eos_token="<|im_end|>", unk_token="<|endoftext|>")
    for msgs in MESSAGES:
        for gen in (True, False):
            assert ours.chat(msgs, add_generation_prompt=gen) == ref.apply_chat_template(
                msgs, tokenize=False, add_generation_prompt=gen)
    assert ours.eos_id == 2 and ours.pad_id == 2  # no pad token: eos stands in
    assert ours.encode("hello world") == [3, 4] == ref.encode("hello world", add_special_tokens=False)
    assert ours.decode([1, 3]) == ref.decode([1, 3])


def test_tokenizer_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json not found: run `python prepare.py`"):
        Tokenizer(tmp_path)
    tiny_tokenizer(tmp_path, None)
    with pytest.raises(ValueError, match="no chat_template"):
        Tokenizer(tmp_path).chat(MESSAGES[0])
    tiny_tokenizer(tmp_path, FANCY)
    with pytest.raises(Exception, match="bad role"):
        Tokenizer(tmp_path).chat([{"role": "tool", "content": "x"}])


def test_real_tokenizer_matches_transformers(model_dir):
    transformers = pytest.importorskip("transformers")
    ours = Tokenizer(model_dir)
    ref = transformers.AutoTokenizer.from_pretrained(model_dir)
    for msgs in MESSAGES:
        assert ours.chat(msgs) == ref.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    text = "Answer: B\n\nQuestion: é?"
    assert ours.encode(text) == ref.encode(text, add_special_tokens=False)
    assert ours.eos_id == ref.eos_token_id and ours.pad_id == (ref.pad_token_id if ref.pad_token_id is not None
                                                              else ref.eos_token_id)


def test_real_answer_labels_are_single_tokens(model_dir):
    # mc scoring reads one logit per answer, so every answer string must be one token
    tok = Tokenizer(model_dir)
    for task in TASKS:
        for labels in ({tuple(mc_item(task, d)[1]) for d in load_benchmark(task, DATA)}):
            for lab in labels:
                assert len(tok.encode(lab)) == 1, (task, lab)
    assert all(len(tok.encode(lab)) == 1 for lab in "ABCDE")


def test_prepared_benchmarks_load_and_render(data_dir):
    for task in TASKS:
        docs = load_benchmark(task, data_dir)
        assert len(docs) == SIZES[task], task
        for doc in docs:
            user, labels, gold = mc_item(task, doc)
            contexts, conts, cgold, _ = cloze_item(task, doc)
            assert gold == (1 - cgold if task == "boolq" else cgold) and len(labels) == len(conts) == len(contexts)

"""
The seven benchmarks from their original releases (for users with internet; `prepare.py` downloads,
this file converts). One pure converter per dataset: original lines -> rows with the Hugging Face
`datasets` columns, which data.py and the shared data folder use.
"""
import json
import zipfile

def _choices(q):
    return {"text": [c["text"] for c in q["choices"]], "label": [c["label"] for c in q["choices"]]}


def convert_arc(lines, stem_column="question"):
    # ARC-V1-Feb2018: {"id", "question": {"stem", "choices": [{"text", "label"}]}, "answerKey"};
    # OpenBookQA-V1-Sep2018 Data/Main has the same layout, and its HF column is `question_stem`
    out = []
    for line in lines:
        d = json.loads(line)
        out.append({"id": d["id"], stem_column: d["question"]["stem"], "choices": _choices(d["question"]),
                    "answerKey": d["answerKey"]})
    return out


def convert_openbookqa(lines):
    return convert_arc(lines, stem_column="question_stem")


def convert_boolq(lines):
    # dev.jsonl: {"question", "title", "answer": bool, "passage"}
    return [{"question": d["question"], "answer": d["answer"], "passage": d["passage"]}
            for d in map(json.loads, lines)]


def convert_piqa(lines, label_lines):
    # valid.jsonl: {"id", "goal", "sol1", "sol2"}; the labels come one per line in valid-labels.lst
    docs = [json.loads(line) for line in lines]
    labels = [int(x) for x in label_lines if x.strip()]
    if len(docs) != len(labels):
        raise ValueError(f"piqa: {len(docs)} questions but {len(labels)} labels")
    return [{"goal": d["goal"], "sol1": d["sol1"], "sol2": d["sol2"], "label": y} for d, y in zip(docs, labels)]


def convert_winogrande(lines):
    # winogrande_1.1/dev.jsonl: {"qID", "sentence", "option1", "option2", "answer": "1"|"2"}
    return [{"sentence": d["sentence"], "option1": d["option1"], "option2": d["option2"], "answer": str(d["answer"])}
            for d in map(json.loads, lines)]


def convert_hellaswag(lines):
    # hellaswag_val.jsonl: the HF columns already, except that the label is an int there
    keys = ("ind", "activity_label", "ctx_a", "ctx_b", "ctx", "endings", "source_id", "split", "split_type")
    return [{**{k: d[k] for k in keys}, "label": str(d["label"])} for d in map(json.loads, lines)]


def _lines(path):
    with open(path, encoding="utf-8") as f:
        return [line for line in f if line.strip()]


def _zip_lines(path, suffix):
    with zipfile.ZipFile(path) as z:
        names = [n for n in z.namelist() if n.endswith(suffix) and "__MACOSX" not in n]
        if len(names) != 1:
            raise ValueError(f"{path}: expected one member ending in {suffix}, found {len(names)}")
        return [line for line in z.read(names[0]).decode("utf-8").splitlines() if line.strip()]


ARC_ZIP = "https://ai2-public-datasets.s3.amazonaws.com/arc/ARC-V1-Feb2018.zip"
OBQA_ZIP = "https://ai2-public-datasets.s3.amazonaws.com/open_book_qa/OpenBookQA-V1-Sep2018.zip"
BOOLQ = "https://storage.googleapis.com/boolq/dev.jsonl"
PIQA = "https://yonatanbisk.com/piqa/data/valid.jsonl"
PIQA_LABELS = "https://yonatanbisk.com/piqa/data/valid-labels.lst"
WINOGRANDE_ZIP = "https://ai2-public-datasets.s3.amazonaws.com/winogrande/winogrande_1.1.zip"
HELLASWAG = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"

URLS = (ARC_ZIP, OBQA_ZIP, WINOGRANDE_ZIP, BOOLQ, PIQA, PIQA_LABELS, HELLASWAG)  # what convert_all takes


def convert_all(arc, obqa, wino, boolq, piqa, piqa_labels, hellaswag):
    """The downloaded files (local paths, in URLS order) -> {(task, split): rows}."""
    return {
        ("arc_easy", "test"): convert_arc(_zip_lines(arc, "ARC-Easy/ARC-Easy-Test.jsonl")),
        ("arc_easy", "validation"): convert_arc(_zip_lines(arc, "ARC-Easy/ARC-Easy-Dev.jsonl")),
        ("arc_challenge", "test"): convert_arc(_zip_lines(arc, "ARC-Challenge/ARC-Challenge-Test.jsonl")),
        ("arc_challenge", "validation"): convert_arc(_zip_lines(arc, "ARC-Challenge/ARC-Challenge-Dev.jsonl")),
        ("openbookqa", "test"): convert_openbookqa(_zip_lines(obqa, "Data/Main/test.jsonl")),
        ("openbookqa", "validation"): convert_openbookqa(_zip_lines(obqa, "Data/Main/dev.jsonl")),
        ("boolq", "validation"): convert_boolq(_lines(boolq)),
        ("piqa", "validation"): convert_piqa(_lines(piqa), _lines(piqa_labels)),
        ("winogrande", "validation"): convert_winogrande(_zip_lines(wino, "/dev.jsonl")),
        ("hellaswag", "validation"): convert_hellaswag(_lines(hellaswag)),
    }

"""metrics.py against the references: the Porter stemmer against nltk's (the one `rouge-score` uses),
ROUGE-L against `rouge-score`'s RougeScorer(["rougeL"], use_stemmer=True).score_multi, exact match and the
GSM8K number parser against hand-checked cases."""
import json
import random

import pytest

import metrics

rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
porter = pytest.importorskip("nltk.stem.porter")

# words that exercise every step and nltk's extensions (irregular forms, "ies"/"ied" of 4 letters, "alli",
# "fulli", "logi", a leading "y", double consonants, two-letter vc words)
WORDS = ("caresses ponies ties caress cats feed agreed disabled matting mating meeting milling messing meetings "
         "happy sky skies dying lying tying news innings outings cannings howe proceed exceed succeed dies died "
         "cried relational conditional rational valenci hesitanci digitizer conformabli radicalli differentli vileli "
         "analogousli vietnamization predication operator feudalism decisiveness hopefulness callousness formaliti "
         "sensitiviti sensibiliti triplicate formative formalize electriciti electrical hopeful goodness revival "
         "allowance inference airliner gyroscopic adjustable defensible irritant replacement adjustment dependent "
         "adoption homologou communism activate angulariti homologous effective bowdlerize probate rate cease "
         "controll roll generalli carefulli biologi yoyo yay ayy by eye at as is it oy ey ab yes yelled playing "
         "flying hopping hoping falling filing tanned fizzed bussed generously crying agreement reply replies "
         "knightly excessively abilities 2023 b52 x").split()


def test_porter_stemmer_equals_nltk(data_dir):
    ref = porter.PorterStemmer()
    words = set(WORDS)
    rng = random.Random(0)  # random strings over letters that hit the y/vowel/consonant rules hardest
    words |= {"".join(rng.choice("aeiouyystlbdngzcx") for _ in range(rng.randint(1, 12))) for _ in range(20000)}
    for f in sorted((data_dir / "sni").glob("*.json"))[:40]:  # real words from the task files
        for x in json.loads(f.read_text())["instances"][:50]:
            words.update(metrics.re.sub(r"[^a-z0-9]+", " ", x["input"].lower()).split())
    bad = [(w, ref.stem(w), metrics.stem(w)) for w in sorted(words) if ref.stem(w) != metrics.stem(w)]
    assert not bad, bad[:10]
    assert len(words) > 20000


CASES = [  # (prediction, references)
    ("the cat sat on the mat", ["the cat sat on the mat"]),
    ("The Cat SAT!", ["the cat sat"]),
    ("running quickly to the stations", ["he runs quick at the station"]),  # stemming matters
    ("", ["anything"]),
    ("something", [""]),
    ("!!! ... ???", ["..."]),  # no tokens on either side
    ("a b c d e f", ["f e d c b a"]),
    ("answer: 42", ["42", "forty-two", "The answer is 42."]),  # best over references
    ("Yes", ["no", "yes"]),
    ("connected connections connecting", ["connect"]),
    ("état café naïve", ["etat cafe naive"]),  # non-ASCII letters are separators in rouge-score
    ("x1 y2 z3 x1", ["x1 z3"]),
    ("This is a longer generated sentence that rambles on", ["a short sentence"]),
]


@pytest.mark.parametrize("pred,refs", CASES)
def test_rouge_l_equals_rouge_score(pred, refs):
    want = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True).score_multi(refs, pred)["rougeL"].fmeasure
    assert metrics.rouge_l(pred, refs) == pytest.approx(want, abs=1e-12)


def test_rouge_l_equals_rouge_score_on_sni_outputs(data_dir):
    outs = []
    for f in sorted((data_dir / "sni").glob("*.json"))[:60]:
        outs += [o for x in json.loads(f.read_text())["instances"][:10] for o in x["output"]]
    scorer, rng = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True), random.Random(1)
    for _ in range(500):
        refs = [rng.choice(outs) for _ in range(rng.randint(1, 3))]
        words = refs[0].split()
        rng.shuffle(words)  # a prediction that overlaps a reference in part
        pred = " ".join(words[:len(words) // 2 + 1]) + " " + rng.choice(outs)[:30]
        want = scorer.score_multi(refs, pred)["rougeL"].fmeasure
        assert metrics.rouge_l(pred, refs) == pytest.approx(want, abs=1e-12), (pred, refs)


def test_exact_match_squad_normalisation():
    assert metrics.exact_match("The Answer.", ["answer"]) == 1.0
    assert metrics.exact_match("an  apple, please!", ["Apple please"]) == 1.0
    assert metrics.exact_match("theory", ["ory"]) == 0.0  # only whole-word articles go
    assert metrics.exact_match("no", ["yes", "No."]) == 1.0
    assert metrics.exact_match("", ["the"]) == 1.0  # both normalise to the empty string
    assert metrics.exact_match("", ["x"]) == 0.0


@pytest.mark.parametrize("text,value", [
    ("so she makes 9 * 2 = $18 every day.", 18), ("The answer is -1,234.5", -1234.5), ("1,2,3", 3),
    ("It costs $1,000,000.", 1e6), ("from 3-5 apples we get 10-3=7", 7), ("a loss of -4 dollars", -4),
    ("ratio .5", 0.5), ("no numbers here", None), ("v2 beats 3.", 3), ("x = 12,50", 50),
])
def test_last_number(text, value):
    assert metrics.last_number(text) == value


def test_gsm8k_gold():
    assert metrics.gsm8k_gold("She makes 9 * 2 = $<<9*2=18>>18 every day.\n#### 18") == 18
    assert metrics.gsm8k_gold("...\n#### 1,250") == 1250
    assert metrics.gsm8k_gold("#### -3") == -3
    with pytest.raises(ValueError):
        metrics.gsm8k_gold("no marker 5")
    assert metrics.numbers_equal(18.0, 18) and not metrics.numbers_equal(None, 18) and not metrics.numbers_equal(17, 18)

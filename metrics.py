"""
Text metrics for the generation-scored tasks, written out so the eval path needs no extra package:

  rouge_l      ROUGE-L F-measure as Super-NaturalInstructions reports it (Wang et al. 2022, its
               compute_metrics.py): Google's `rouge-score` RougeScorer(["rougeL"], use_stemmer=True)
               with its default tokenizer, best over the reference outputs. Tested equal to `rouge-score`
               (tests/test_metrics.py), Porter stemmer included (nltk's default NLTK_EXTENSIONS mode).
  exact_match  SQuAD-style normalised string equality, best over the references (SNI's second metric).
  last_number  GSM8K: the last number of a generation ("-1,234.5" -> -1234.5), compared with the
               number after "####" in the reference solution (T2L_NOTES section 7).

    python metrics.py "the cats sat" "a cat sat down"    # ROUGE-L and exact match of two strings
"""
import math
import re
import string
import sys

# --------------------------------------------------------------------------------------------
# Porter stemmer (Porter 1980), in the variant nltk uses by default and rouge-score therefore applies


VOWELS = frozenset("aeiou")
# nltk's irregular forms, looked up before any rule
IRREGULAR = {"sky": "sky", "skies": "sky", "dying": "die", "lying": "lie", "tying": "tie", "news": "news",
             "innings": "inning", "inning": "inning", "outings": "outing", "outing": "outing",
             "cannings": "canning", "canning": "canning", "howe": "howe", "proceed": "proceed",
             "exceed": "exceed", "succeed": "succeed"}


def consonants(word):
    # a "y" is a consonant at the start or after a vowel, a vowel after a consonant
    flags = []
    for i, ch in enumerate(word):
        flags.append(ch not in VOWELS and (ch != "y" or i == 0 or not flags[i - 1]))
    return flags


def measure(stem):
    # m in [C](VC)^m[V]: the number of vowel-consonant transitions
    f = consonants(stem)
    return sum(1 for a, b in zip(f, f[1:]) if not a and b)


def has_vowel(stem):
    return not all(consonants(stem))


def ends_cvc(w):
    f = consonants(w)
    return ((len(w) >= 3 and f[-3] and not f[-2] and f[-1] and w[-1] not in "wxy")
            or (len(w) == 2 and not f[0] and f[1]))  # nltk's extension: a two-letter vc word counts


def ends_double(w):
    return len(w) >= 2 and w[-1] == w[-2] and consonants(w)[-1]


def apply_rules(word, rules):
    # only the first rule whose suffix matches is tried; if its condition fails the word is unchanged
    for suffix, repl, cond in rules:
        if suffix == "*d":  # a double consonant: drop one
            if ends_double(word):
                return word[:-2] + repl if cond is None or cond(word[:-2]) else word
            continue
        if word.endswith(suffix):
            stem = word[:len(word) - len(suffix)]
            return stem + repl if cond is None or cond(stem) else word
    return word


m_gt0 = lambda s: measure(s) > 0
m_gt1 = lambda s: measure(s) > 1
STEP2 = [("ational", "ate"), ("tional", "tion"), ("enci", "ence"), ("anci", "ance"), ("izer", "ize"),
         ("bli", "ble"), ("alli", "al"), ("entli", "ent"), ("eli", "e"), ("ousli", "ous"), ("ization", "ize"),
         ("ation", "ate"), ("ator", "ate"), ("alism", "al"), ("iveness", "ive"), ("fulness", "ful"),
         ("ousness", "ous"), ("aliti", "al"), ("iviti", "ive"), ("biliti", "ble"), ("fulli", "ful")]
STEP3 = [("icate", "ic"), ("ative", ""), ("alize", "al"), ("iciti", "ic"), ("ical", "ic"), ("ful", ""), ("ness", "")]
STEP4 = ["al", "ance", "ence", "er", "ic", "able", "ible", "ant", "ement", "ment", "ent", "ion", "ou", "ism",
         "ate", "iti", "ous", "ive", "ize"]


def step2(w):
    if w.endswith("alli") and m_gt0(w[:-4]):
        return step2(w[:-4] + "al")
    rules = [(s, r, m_gt0) for s, r in STEP2] + [("logi", "log", lambda s: m_gt0(w[:-3]))]
    return apply_rules(w, rules)


def step1b(w):
    if w.endswith("ied"):
        return w[:-3] + ("ie" if len(w) == 4 else "i")
    if w.endswith("eed"):
        return w[:-1] if measure(w[:-3]) > 0 else w
    for suffix in ("ed", "ing"):
        if w.endswith(suffix) and has_vowel(w[:-len(suffix)]):
            s = w[:-len(suffix)]
            return apply_rules(s, [("at", "ate", None), ("bl", "ble", None), ("iz", "ize", None),
                                   ("*d", s[-1], lambda _: s[-1] not in "lsz"),
                                   ("", "e", lambda t: measure(t) == 1 and ends_cvc(t))])
    return w


def stem(word):
    w = word.lower()
    if w in IRREGULAR:
        return IRREGULAR[w]
    if len(w) <= 2:
        return w
    # step 1a: plurals
    w = w[:-3] + "ie" if w.endswith("ies") and len(w) == 4 else apply_rules(
        w, [("sses", "ss", None), ("ies", "i", None), ("ss", "ss", None), ("s", "", None)])
    w = step1b(w)
    w = apply_rules(w, [("y", "i", lambda s: len(s) > 1 and consonants(s)[-1])])  # step 1c
    w = step2(w)
    w = apply_rules(w, [(s, r, m_gt0) for s, r in STEP3])
    w = apply_rules(w, [(s, "", (lambda t: m_gt1(t) and t[-1] in "st") if s == "ion" else m_gt1) for s in STEP4])
    if w.endswith("e"):  # step 5a
        s = w[:-1]
        if measure(s) > 1 or (measure(s) == 1 and not ends_cvc(s)):
            w = s
    if w.endswith("ll") and measure(w[:-1]) > 1:  # step 5b
        w = w[:-1]
    return w


# --------------------------------------------------------------------------------------------
# ROUGE-L and exact match (SNI), GSM8K answers


def rouge_tokens(text):
    # rouge-score's default tokenizer: lower-case, non-alphanumerics to spaces, stem tokens of 4+ characters
    return [stem(t) if len(t) > 3 else t for t in re.sub(r"[^a-z0-9]+", " ", text.lower()).split()]


def lcs_length(a, b):
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(prediction, references):
    """Best ROUGE-L F-measure of `prediction` over the reference strings, in [0, 1]."""
    pred, best = rouge_tokens(prediction), 0.0
    for ref in references:
        ref = rouge_tokens(ref)
        lcs = lcs_length(ref, pred) if ref and pred else 0
        if lcs:
            p, r = lcs / len(pred), lcs / len(ref)
            best = max(best, 2 * p * r / (p + r))
    return best


def normalize_answer(s):
    # SQuAD's normalisation, as SNI's compute_metrics.py applies it: lower, no punctuation, no articles
    s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", s).split())


def exact_match(prediction, references):
    return float(any(normalize_answer(prediction) == normalize_answer(r) for r in references))


# a number: optional minus (not a hyphen inside a word or range), digits with optional thousands commas,
# optional decimals. "1,2,3" is three numbers, "1,234" one.
NUMBER = re.compile(r"(?:(?<![\w.])-)?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|(?:(?<![\w.])-)?\.\d+")


def last_number(text):
    found = NUMBER.findall(text)
    return float(found[-1].replace(",", "")) if found else None


def gsm8k_gold(answer):
    """The number after '####' in a GSM8K reference solution."""
    if "####" not in answer:
        raise ValueError("a GSM8K answer must end in '#### <number>'")
    value = last_number(answer.split("####")[-1])
    if value is None:
        raise ValueError(f"no number after '####' in {answer[-40:]!r}")
    return value


def numbers_equal(a, b):
    return a is not None and b is not None and abs(a - b) <= 1e-6 * max(1.0, abs(b))


def summarize(xs):
    """Mean of 0/1 scores and its sample standard error, as lm-eval reports them."""
    n = len(xs)
    p = sum(xs) / n
    return p, math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else 0.0


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: python metrics.py PREDICTION REFERENCE [REFERENCE ...]")
    pred, refs = sys.argv[1], sys.argv[2:]
    print(f"tokens {rouge_tokens(pred)} vs {[rouge_tokens(r) for r in refs]}")
    print(f"rougeL {100 * rouge_l(pred, refs):.2f}  exact_match {100 * exact_match(pred, refs):.0f}")

"""Generate benchmarks/data/corpus.txt: a deterministic English-like pseudo-text for benchmark prompts.

The text is made here, from the small word lists below (common English words, no copyrighted source), by a
seeded random sentence grammar; nothing is copied from any book. Same seed, same bytes:

    python benchmarks/data/make_corpus.py            # rewrites corpus.txt (seed 20240601, ~150 KB)
    python benchmarks/data/make_corpus.py --check    # exit 1 if corpus.txt differs from what it would write

bench_serving.py cuts prompts out of it at token boundaries so that every prompt has an exact token count.
"""

from __future__ import annotations

import argparse
import os
import random
import sys

SEED = 20240601
PARAGRAPHS = 400

DET = "the a this that every each one another some no".split()
ADJ = ("old young small large quiet loud bright dark warm cold early late quick slow careful simple strange "
       "gentle heavy light narrow wide deep shallow green red blue golden silver wooden stone distant near "
       "hidden open empty full busy calm rough smooth tall short sharp soft clever honest patient proud "
       "tired hungry happy sad brave shy rare common ancient modern northern southern eastern western "
       "little great long brief clear cloudy dry wet fresh").split()
NOUN = ("river mountain village city road bridge garden forest field window door house tower market harbor "
        "ship boat train station letter book lamp candle table chair clock bell song story river valley "
        "island lake sea shore hill cloud storm wind rain snow morning evening night winter summer spring "
        "autumn farmer teacher sailor doctor child traveler merchant baker painter writer soldier king queen "
        "friend stranger neighbor horse dog cat bird fox wolf owl fish apple bread coin key map stone tree "
        "flower road path wall roof kitchen school library museum theater machine engine wheel compass "
        "lantern blanket basket mirror ladder rope garden orchard meadow canal tunnel castle chapel mill "
        "factory office letter message question answer idea plan journey secret promise memory voice").split()
VERB_T = ("found carried watched opened closed painted built crossed followed remembered repaired visited "
          "described noticed lifted pushed pulled counted measured borrowed returned delivered guarded "
          "studied cleaned filled emptied answered wrote read sold bought kept lost shared collected "
          "finished started drew climbed chased greeted thanked warned").split()
VERB_I = ("waited slept laughed sang walked rested wandered listened waved smiled shouted whispered "
          "worked traveled arrived departed returned paused hurried lingered danced stayed").split()
PREP = "near beside behind under over across through along around beyond toward inside outside past".split()
ADV = ("slowly quickly quietly carefully suddenly gently finally often rarely again soon later early "
       "together alone happily patiently").split()
CONJ = "and but so while because although until after before when".split()
TIME = ("in the morning|at noon|before dawn|after supper|late at night|on a rainy day|during the festival|"
        "in early spring|at the end of the week|every evening|long ago|the next day").split("|")
NAMES = ("Anna Ben Clara David Elena Felix Greta Hugo Iris Jonas Kira Leo Maya Nils Olga Paul Rosa Sam "
         "Tara Victor Wren Yuri Zoe").split()


def noun_phrase(r: random.Random) -> str:
    if r.random() < 0.12:
        return r.choice(NAMES)
    words = [r.choice(DET)]
    if r.random() < 0.6:
        words.append(r.choice(ADJ))
    words.append(r.choice(NOUN))
    if r.random() < 0.2:
        words += ["of", "the", r.choice(NOUN)]
    return " ".join(words)


def clause(r: random.Random) -> str:
    subject = noun_phrase(r)
    if r.random() < 0.6:
        parts = [subject, r.choice(VERB_T), noun_phrase(r)]
    else:
        parts = [subject, r.choice(VERB_I)]
    if r.random() < 0.5:
        parts += [r.choice(PREP), noun_phrase(r)]
    if r.random() < 0.3:
        parts.append(r.choice(ADV))
    if r.random() < 0.2:
        parts.append(r.choice(TIME))
    return " ".join(parts)


def sentence(r: random.Random) -> str:
    s = clause(r)
    if r.random() < 0.35:
        s += ("," if r.random() < 0.5 else "") + " " + r.choice(CONJ) + " " + clause(r)
    s = s[0].upper() + s[1:]
    end = r.choices([".", "!", "?"], [0.86, 0.06, 0.08])[0]
    if end == "?":
        s = r.choice(["Did you know that", "Is it true that", "Who would believe that"]) + " " + s[0].lower() + s[1:]
    return s + end


def make_text(seed: int = SEED, paragraphs: int = PARAGRAPHS) -> str:
    r = random.Random(seed)
    out = []
    for _ in range(paragraphs):
        out.append(" ".join(sentence(r) for _ in range(r.randint(3, 9))))
    return "\n\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--output", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus.txt"))
    ap.add_argument("--check", action="store_true", help="compare instead of writing")
    a = ap.parse_args(argv)
    text = make_text(a.seed)
    if a.check:
        with open(a.output, encoding="utf-8") as f:
            same = f.read() == text
        print("corpus.txt is up to date" if same else "corpus.txt differs from the generator's output")
        return 0 if same else 1
    with open(a.output, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {a.output}: {len(text)} characters")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Write deterministic input files of words, one word a line.

    python3 gen_words.py OUTDIR [--keys N] [--words N] [--seed N]

Files are named 00000, 00001, ...: numeric names, so s4 places input i on
node i % nodes. Words are made of a few syllables, so they repeat (and
the merged buckets have duplicates to count). Stdlib only.
"""
import argparse
import os
import random

SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "qu", "bar", "dun"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir")
    parser.add_argument("--keys", type=int, default=6)
    parser.add_argument("--words", type=int, default=20000, help="words per file")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    vocabulary = sorted({"".join(rng.choices(SYLLABLES, k=rng.randint(1, 4))) for _ in range(5000)})
    os.makedirs(args.outdir, exist_ok=True)
    for i in range(args.keys):
        with open(os.path.join(args.outdir, f"{i:05d}"), "w") as f:
            f.write("".join(word + "\n" for word in rng.choices(vocabulary, k=args.words)))


if __name__ == "__main__":
    main()

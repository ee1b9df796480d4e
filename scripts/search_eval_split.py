#!/usr/bin/env python3
"""Splits the search evaluation's queries into tuning and held-out, by a fixed rule.

Owns the split of tests/search's queries (not the queries, not the scoring). It never reads a
ranking: the rule depends on the query texts, their domain and kind alone.

The rule: queries are grouped by (domain, kind), a domain being the "# <domain>" section a query
sits in. Within a group, queries are ordered by SHA-256 of SEED + "|" + query text; the 1st, 3rd,
5th, ... go to tuning and the 2nd, 4th, ... to held-out, except that in a group with an odd count
the last query (a leftover) goes to the split with fewer leftovers of its domain so far, on a tie
to the one with fewer leftovers of its kind so far, on a tie to tuning (groups visited in
alphabetical order of domain, then kind): each domain splits within one, each kind about evenly. Each output file keeps the queries in the
order they were written, under their domain's section.

    scripts/search_eval_split.py split SOURCE   # writes queries-tuning.txt, queries-heldout.txt
    scripts/search_eval_split.py check          # re-derives the split from the two files
"""

import hashlib
import sys
from pathlib import Path

SEED = "agentkeeper-search-eval-split-v1"
DIR = Path(__file__).resolve().parent.parent / "tests" / "search"
TUNING = DIR / "queries-tuning.txt"
HELD_OUT = DIR / "queries-heldout.txt"

HEADER = """\
# {title} queries of the search evaluation: "<kind> | <relevant agent names, comma separated> | <query>",
# grouped under "# <domain>" sections (the domain of the cards the queries were written for).
# Kinds: paraphrase (the need in the user's words, sharing few words with the card), typo
# (misspelt words), tool (names a tool the agent uses), keyword (a few words of jargon).
# The 250 queries were written from the cards' purposes and committed before any ranking was run
# on them, and are not to be edited after. scripts/search_eval_split.py made the split before any
# ranking too, by a fixed rule: per (domain, kind), order the queries by the SHA-256 of
# "{seed}|<query>" and alternate tuning / held-out; an odd group's
# last query goes to the split with fewer such leftovers of its domain so far, then of its kind,
# then tuning (groups taken in alphabetical order). `scripts/search_eval_split.py check` verifies
# the files follow the rule.
# {rule}
"""

RULES = {
    "tuning": "Tune on these: read their misses, choose weights on them, cross-validate on them.",
    "held-out": "Never read these queries' misses or per-query ranks while tuning: report aggregates only.",
}


def parse(text):
    """(domain, kind, line) for every query line, in file order."""
    queries, domain = [], None
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            # A section header is a single word after "# "; longer comments are the file header.
            words = line[1:].split()
            if len(words) == 1:
                domain = words[0]
            continue
        parts = [p.strip() for p in line.split("|", 2)]
        if len(parts) != 3 or domain is None:
            sys.exit(f"bad query line (or no domain section before it): {line!r}")
        queries.append((domain, parts[0], " | ".join(parts)))
    return queries


def assign(queries):
    """The split each query line goes to: {line: "tuning" | "held-out"}."""
    groups = {}
    for domain, kind, line in queries:
        groups.setdefault((domain, kind), []).append(line)
    leftovers = {}
    where = {}
    for (domain, kind), lines in sorted(groups.items()):
        text = lambda line: line.split("|", 2)[2].strip()
        ordered = sorted(lines, key=lambda l: hashlib.sha256(f"{SEED}|{text(l)}".encode()).hexdigest())
        for i, line in enumerate(ordered):
            if len(ordered) % 2 == 1 and i == len(ordered) - 1:
                by_domain = leftovers.setdefault(("domain", domain), {"tuning": 0, "held-out": 0})
                by_kind = leftovers.setdefault(("kind", kind), {"tuning": 0, "held-out": 0})
                side = min(["tuning", "held-out"], key=lambda s: (by_domain[s], by_kind[s]))
                by_domain[side] += 1
                by_kind[side] += 1
            else:
                side = "tuning" if i % 2 == 0 else "held-out"
            if line in where:
                sys.exit(f"duplicate query: {line!r}")
            where[line] = side
    return where


def render(title, queries, where, side):
    out, domain = [HEADER.format(title=title, seed=SEED, rule=RULES[side])], None
    for d, _, line in queries:
        if where[line] != side:
            continue
        if d != domain:
            out.append(f"\n# {d}\n")
            domain = d
        out.append(line + "\n")
    return "".join(out)


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "split":
        queries = parse(Path(sys.argv[2]).read_text())
        where = assign(queries)
        TUNING.write_text(render("Tuning", queries, where, "tuning"))
        HELD_OUT.write_text(render("Held-out", queries, where, "held-out"))
    elif len(sys.argv) == 2 and sys.argv[1] == "check":
        tuning, held_out = parse(TUNING.read_text()), parse(HELD_OUT.read_text())
        where = assign(tuning + held_out)
        wrong = [l for _, _, l in tuning if where[l] != "tuning"]
        wrong += [l for _, _, l in held_out if where[l] != "held-out"]
        if wrong:
            sys.exit("not where the rule puts them:\n" + "\n".join(wrong))
        print(f"split ok: {len(tuning)} tuning, {len(held_out)} held-out")
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()

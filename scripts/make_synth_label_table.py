#!/usr/bin/env python3
"""Writes shared/synth/data/label_sets.tsv: every distinct "Finding Labels"
value of the real NIH ChestX-ray14 metadata with how many images carry it.
The synthetic generator (crate chexvision-synth) embeds the table and draws
each image's label set from it, so synthetic data has the real label
frequencies and co-occurrences.

    python3 scripts/make_synth_label_table.py [path/to/Data_Entry_2017_v2020.csv.gz]

Standard library only. Output: '#' comment lines, then `count<TAB>labels`
lines sorted by count (descending), then by the labels text.
"""
import collections
import csv
import gzip
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_SOURCE = pathlib.Path("/work/shared/data/nih/Data_Entry_2017_v2020.csv.gz")
OUT = ROOT / "shared/synth/data/label_sets.tsv"


def main():
    source = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_SOURCE
    opener = gzip.open if source.suffix == ".gz" else open
    with opener(source, "rt", newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        column = header.index("Finding Labels")
        counts = collections.Counter(row[column].strip() for row in reader if row)
    total = sum(counts.values())
    rows = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    lines = [
        "# Label-set frequencies of the NIH ChestX-ray14 metadata.",
        f"# Source: {source.name} ({total} images, {len(rows)} distinct label sets).",
        "# Written by scripts/make_synth_label_table.py; read by chexvision-synth.",
        "# count<TAB>Finding Labels, by count descending then labels.",
    ]
    lines += [f"{count}\t{labels}" for labels, count in rows]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n")
    print(f"wrote {OUT} ({len(rows)} label sets, {total} images)")


if __name__ == "__main__":
    main()

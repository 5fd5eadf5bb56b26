"""Check a submission file against a dataset before uploading it.

    python scripts/validate_submission.py SUBMISSION --format FMT --root DIR [--kind animalclef|humpback|animalclef2026]

Prints OK with counts, or every problem found and exits with status 2.
"""
from __future__ import annotations

import argparse

import engine.components  # noqa: F401  (the built-in names a config may use, registered)
from core.errors import cli_entry
from core.schema import DataConfig
from engine.outputs.submission import (
    CLUSTERS,
    COLUMNS,
    NEW_LABEL,
    check_submission,
    query_rows,
    read_submission,
    submission_kind,
)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("submission", help="the CSV file to check")
    parser.add_argument("--format", required=True, help="dataset format (animalclef2025, humpback, csv, ...)")
    parser.add_argument("--root", default="", help="dataset root (empty for --format synthetic)")
    parser.add_argument("--kind", choices=sorted(COLUMNS), default=None,
                        help="submission format (default: from --format)")
    return parser.parse_args(argv)


@cli_entry
def main(argv=None) -> None:
    args = parse_args(argv)
    from data.formats import load_table  # the data layer is only needed once the arguments are valid

    table = load_table(DataConfig(format=args.format, root=args.root, verify_images=False))
    clustering = args.kind == CLUSTERS or (args.kind is None and args.format == "animalclef2026")
    kind = submission_kind(args.format, args.kind or "auto", "cluster" if clustering else "identify")
    frame = read_submission(args.submission)
    check_submission(frame, table, kind)
    if kind == CLUSTERS:
        clusters = frame.groupby(table.set_index(table["image_id"].astype(str)).loc[frame["image_id"], "dataset"].to_numpy())
        counts = ", ".join(f"{name} {part['cluster'].nunique()}" for name, part in clusters)
        print(f"OK: {args.submission} is a valid {kind} submission: {len(frame)} rows covering all "
              f"{len(query_rows(table))} test images; clusters per dataset: {counts}")
        return
    label = frame[COLUMNS[kind][1]].astype(str).str.strip()
    first = label.str.split().str[0]
    new = int((first == NEW_LABEL[kind]).sum())
    print(f"OK: {args.submission} is a valid {kind} submission: {len(frame)} rows covering all "
          f"{len(query_rows(table))} query images; {new} predicted new ({NEW_LABEL[kind]} first), "
          f"{first[first != NEW_LABEL[kind]].nunique()} distinct database identities predicted first")


if __name__ == "__main__":
    main()

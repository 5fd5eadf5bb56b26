#!/usr/bin/env python
"""Write the built-in synthetic re-ID dataset (AnimalCLEF 2025 format, or 2026's) to a folder.

    python scripts/make_synthetic.py --out DIR [--seed S] [--individuals N]
        [--images-per-individual M] [--workers W] [--scenes [--sites K]] [--format animalclef2025|animalclef2026]

--format animalclef2026 lays it out for clustering (data/synthetic_animalclef2026.py): labelled
train rows, unlabelled test rows (their answers in solution.csv), one dataset without train rows.

--scenes writes scene mode: small animals in wide frames over shared backgrounds, some with a
second animal, and a YOLO label file per image under labels/ (for detectors). With --sites K the
scenes are K camera sites per species, each individual photographed at one or two of them (the
same ground, rocks, vegetation and overlay on every photo of a site): keypoint re-ranking's
development set for backgrounds shared by different individuals.
"""
import argparse
import time

import pandas as pd

import engine.components  # noqa: F401  (the built-in names a config may use, registered)
from core.errors import ConfigError, cli_entry
from data.synthetic import generate


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder to write (created; a previous synthetic set is replaced)")
    parser.add_argument("--seed", type=int, default=0, help="the same seed writes the same files")
    parser.add_argument("--individuals", type=int, default=120)
    parser.add_argument("--images-per-individual", type=int, default=12)
    parser.add_argument("--workers", type=int, default=1, help="processes rendering images")
    parser.add_argument("--scenes", action="store_true",
                        help="small animals in shared scenes, some with a second animal, plus YOLO labels")
    parser.add_argument("--sites", type=int, default=0,
                        help="with --scenes: camera sites per species (each individual at one or two)")
    parser.add_argument("--format", choices=["animalclef2025", "animalclef2026"], default="animalclef2025",
                        help="layout: AnimalCLEF 2025 (database/query) or 2026 (train/test, for clustering)")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    if args.format == "animalclef2026":
        if args.scenes or args.sites:
            raise ConfigError("--scenes and --sites apply to --format animalclef2025 only")
        from data.synthetic_animalclef2026 import generate_animalclef2026

        out = generate_animalclef2026(args.out, seed=args.seed, individuals=args.individuals,
                                      images_per_individual=args.images_per_individual, progress=True)
        table = pd.read_csv(out / "metadata.csv")
        counts = table.groupby(["dataset", "split"]).size().unstack(fill_value=0)
        parts = ", ".join(f"{name} {int(row.get('train', 0))} train / {int(row.get('test', 0))} test"
                          for name, row in counts.iterrows())
        print(f"wrote {len(table)} images in AnimalCLEF 2026 layout to {out} ({parts}; answers in solution.csv) "
              f"in {time.perf_counter() - start:.1f} s")
        return
    out = generate(args.out, seed=args.seed, individuals=args.individuals,
                   images_per_individual=args.images_per_individual, workers=args.workers, scenes=args.scenes,
                   sites=args.sites)
    seconds = time.perf_counter() - start
    table = pd.read_csv(out / "metadata.csv")
    query = table[table["split"] == "query"]
    new = set(query["identity"]) - set(table.loc[table["split"] == "database", "identity"])
    print(f"wrote {len(table)} images of {table['identity'].nunique()} individuals "
          f"({', '.join(sorted(table['dataset'].unique()))}) to {out}: {len(table) - len(query)} database, "
          f"{len(query)} query ({len(new)} individuals only in query) in {seconds:.1f} s")


if __name__ == "__main__":
    main()

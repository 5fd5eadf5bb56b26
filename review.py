"""Review an eval.py run with a person in the loop: the pairs whose answers change its decisions most,
one at a time, on a local web page; every answer is applied at once (docs/review.md).

    python review.py RUN_DIR                           # serve the review page on http://127.0.0.1:8765/
    python review.py serve RUN_DIR --host 0.0.0.0 --token SECRET      # reviewers on other machines
    python review.py simulate RUN_DIR --truth solution.csv --answers 100 --selector default --out SIM
                                                       # an oracle answers from the true identities
    python review.py apply RUN_DIR                     # the reviewed submission into RUN_DIR/reviewed
    python review.py export RUN_DIR --out GALLERY      # confirmed individuals as a folders gallery
    python eval.py ... review=RUN_DIR/review-answers.sqlite        # a new run with the answers applied

The answers are kept in RUN_DIR/review-answers.sqlite (one transaction per answer). Installed, the
command is `reidzoo-review`; the page needs the review extra: pip install -e ".[review]".
"""
from __future__ import annotations

import argparse
import sys

from core.errors import cli_entry

COMMANDS = ("serve", "simulate", "apply", "export")


def _common(parser: argparse.ArgumentParser, answers: bool = True) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="an eval.py output folder (task=identify or cluster)")
    if answers:
        parser.add_argument("--answers-file", help="the answers file (default: RUN_DIR/review-answers.sqlite)")


def _choosing(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--selector", default="default", help="which pair next: default | uncertainty | random")
    parser.add_argument("--refit", default="auto", help="re-fit thresholds from the answers: auto | always | never")
    parser.add_argument("--min-answers", type=int, default=30, help="answers a dataset needs before its threshold is re-fitted")
    parser.add_argument("--error-prior", type=float, default=None,
                        help="how often a person may answer wrongly: > 0 also asks verification questions on "
                             "decisions the model doubts, so that a wrong answer comes out as a contradiction "
                             "(0: never; default: ReviewOptions.error_prior)")
    parser.add_argument("--seed", type=int, default=0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reidzoo-review", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the review page (the default command)")
    _common(serve)
    _choosing(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    serve.add_argument("--port", type=int, default=8765, help="port (0: any free one)")
    serve.add_argument("--token", help="access token every request must carry (required off loopback; else generated)")
    simulate = commands.add_parser("simulate", help="an oracle answers from the true identities")
    _common(simulate, answers=False)
    _choosing(simulate)
    simulate.add_argument("--truth", required=True, help="CSV of image_id,identity (or file,identity)")
    simulate.add_argument("--answers", type=int, required=True, help="pairs answered per dataset")
    simulate.add_argument("--error-rate", type=float, default=0.0, help="share of answers the oracle gives wrongly")
    simulate.add_argument("--out", required=True, help="folder for the reviewed outputs and the answers")
    apply = commands.add_parser("apply", help="write the reviewed submission and tables")
    _common(apply)
    apply.add_argument("--out", help="folder to write (default: RUN_DIR/reviewed)")
    export = commands.add_parser("export", help="confirmed individuals as a folders gallery")
    _common(export)
    export.add_argument("--out", required=True, help="the gallery folder to write")
    return parser


@cli_entry
def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in COMMANDS and not argv[0].startswith("-"):
        argv.insert(0, "serve")  # `reidzoo-review RUN_DIR` serves the page
    args = build_parser().parse_args(argv)
    from engine.review import commands
    from engine.review.session import ReviewOptions

    if args.command == "export":
        counts = commands.export_into(args.run_dir, args.out, args.answers_file)
        print(f"{counts['individuals']} individuals, {counts['photos']} photos in {args.out} "
              f"(train.py / eval.py data.format=folders data.root={args.out})")
        return counts
    if args.command == "apply":
        folder = commands.apply_answers(args.run_dir, args.answers_file, ReviewOptions(), args.out)
        print(f"reviewed outputs: {folder}")
        return folder
    chosen = {} if args.error_prior is None else {"error_prior": args.error_prior}
    options = ReviewOptions(args.selector, args.refit, min_answers=args.min_answers, seed=args.seed, **chosen)
    if args.command == "simulate":
        summary = commands.simulate_into(args.run_dir, truth=args.truth, answers=args.answers, out=args.out,
                                         options=options, error_rate=args.error_rate, seed=args.seed)
        print(f"{summary['answers']} answers ({', '.join(f'{d}: {n}' for d, n in summary['asked'].items())}); "
              f"{summary['contradictions']} contradictions; outputs in {args.out}")
        return summary
    commands.serve(args.run_dir, host=args.host, port=args.port, token=args.token, answers=args.answers_file,
                   options=options, say=lambda line: print(line, flush=True))
    return None


def console() -> None:
    """The `reidzoo-review` command (setup.cfg's console_scripts)."""
    main(sys.argv[1:])


if __name__ == "__main__":
    console()

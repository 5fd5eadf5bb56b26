"""The engine, by job: `training/` and `detection/` (train.py's two tasks), `identify/` and `cluster/`
(eval.py's two tasks) on the shared `scoring/` and `outputs/`, `matching/` (keypoint re-ranking) and
`reproduce/`; the modules here are shared by all of them (docs/architecture.md)."""

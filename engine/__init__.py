"""The engine: `training/` (train.py's loop) and `evaluation/` (eval.py's pipeline); the modules here
(extraction, embedding cache, retrieval, metrics, visual grids, accelerator set-up) serve both."""

"""Leaderboard recipes reproduced by one command (scripts/reproduce.py, recipes/README.md).

`recipe.py` reads and checks a recipe folder, `twin_data.py` writes a synthetic twin's data,
`fingerprint.py` identifies code, data and stages, `runner.py` runs the stages in order (skipping
those whose fingerprint is unchanged) and `manifest.py` records what made the submission.
"""

"""Nightly regression runs: a history of evaluated checkpoints, significance tests, reports.

history.py   SQLite history of checkpoints, runs and per-task results
compare.py   two runs compared per task and suite (Fisher exact + Holm), new failures
report.py    HTML (self-contained) and Markdown report with trend plots
nightly.py   the `asyncvla-eval nightly` and `asyncvla-eval compare` commands
"""

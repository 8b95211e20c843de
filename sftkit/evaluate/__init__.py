"""Tuned-vs-base evaluation (eval.py): answers from both models, pairwise judging in both orders, the report."""

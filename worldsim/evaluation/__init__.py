"""Evaluation of the world model on held-out clips and revisit windows, and its reports."""

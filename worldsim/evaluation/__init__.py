"""Evaluation of the world model on held-out data: single-chunk clips, multi-chunk revisit
windows, and the reports (tables, curves, videos) they write.
"""

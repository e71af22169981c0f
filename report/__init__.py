"""The study report: the paper's tables and figures regenerated from the warehouse, beside the
published numbers, as one self-contained HTML document and a PDF of it.

Pure rendering: DataFrames read from the warehouse go in, HTML text and PDF bytes come out; the
Dagster asset (assets/report.py) reads the tables and writes the files.
"""

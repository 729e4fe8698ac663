"""Corpora tools: the split-file writers behind ``data/make_csv.py`` and the generated demo corpus."""

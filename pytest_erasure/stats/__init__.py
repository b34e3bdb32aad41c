"""The statistics, one family, importing nothing of ours but the records.

Every number a verdict rests on is computed here, from counts alone: no model, no detector, no
pytest. Keeping them in one package lets the error tables (`gate.py`) be computed for exactly the
rules the verdicts apply (`verdict.py`), and lets a reviewer read the whole of the statistical
argument without reading the audit's machinery.
"""

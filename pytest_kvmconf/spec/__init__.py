"""Spec files: the format (model.py), loading and validation (loader.py), the condition language
(expr.py), lock rules (locks.py) and document versions (versions.py)."""

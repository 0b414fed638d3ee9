"""Deliberately broken backends: each breaks one documented rule, and some spec must catch it."""

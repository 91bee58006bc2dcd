"""Vocabulary compression."""

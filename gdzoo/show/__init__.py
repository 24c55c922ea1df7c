"""Showing results: tables, JSON and CSV (``render``)."""

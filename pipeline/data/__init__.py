"""Offline data sources: built-in data sets from installed packages, or the user's own files."""

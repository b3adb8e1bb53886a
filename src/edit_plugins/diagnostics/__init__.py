"""Diagnostics: superposition analysis and the after-edit interference log."""

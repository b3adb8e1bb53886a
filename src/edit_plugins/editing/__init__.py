"""Shared editing math: keys, target values, covariance statistics and the rank-one update.

WilKE, the ROME baseline and the superposition diagnostics all build on these modules.
"""

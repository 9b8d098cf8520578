"""Offline measurement.

The decisions log, estimators and exact bounds, threshold certification, planning, cost reports,
the thresholds file.
"""

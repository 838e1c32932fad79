"""Evaluation: metrics, leave-one-subject-out driver, reports and plots."""

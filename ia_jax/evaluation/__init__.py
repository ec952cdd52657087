"""Asking organisms about themselves and scoring the answers: questions, judges, metrics, reports."""

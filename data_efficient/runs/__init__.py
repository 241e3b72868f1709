"""Rerun to resume, in one place: the stage driver and run-state snapshots."""

"""Thin Prefect tasks around `dynslice.pipeline` (installed as `dynslice.tasks`)."""

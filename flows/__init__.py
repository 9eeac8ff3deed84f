"""Prefect flows composed of the tasks in `dynslice.tasks` (installed as `dynslice.flows`)."""

"""The pipeline's stages as plain functions (no Prefect): each module declares one `Stage` and a `run`
function; `dynslice.pipeline.stage.run_stage` does the key, lookup, verify, compute and publish for all.

Stages, in order: calibration (token windows), score (one dense pass, every metric), plan (widths),
slice (the layer loop, checkpointed in the store), evaluate (dense or sliced). Prefect tasks in
`dynslice.tasks` are thin wrappers around them; the same functions run without Prefect in tests and notebooks.
"""

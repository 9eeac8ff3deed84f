#!/bin/sh
# Entry point of the dynslice worker image.
#   no arguments, or only options:  a Prefect worker polling the work pool $DYNSLICE_POOL; it is a "process"
#                                   worker, so flow runs execute in this container, on its GPUs; options are
#                                   passed on to `prefect worker start` (e.g. --name gpu-box-1)
#   anything else:                  run as given, e.g. `dynslice run compress --config my.yaml`
set -eu

if [ "$#" -gt 0 ] && [ "${1#-}" = "$1" ]; then
    exec "$@"
fi

: "${DYNSLICE_POOL:?set DYNSLICE_POOL to the Prefect work pool this worker polls}"
: "${PREFECT_API_URL:?set PREFECT_API_URL to the team Prefect server, e.g. http://prefect-server:4200/api}"

# --limit: flow runs at a time (default 1: two slicing runs on one GPU would compete for its memory).
# --with-healthcheck: serves /health on PREFECT_WORKER_WEBSERVER_HOST:PORT, answering 200 while the worker
# keeps polling the API (the image's HEALTHCHECK reads it).
exec prefect worker start \
    --pool "$DYNSLICE_POOL" \
    --type process \
    --limit "${DYNSLICE_WORKER_LIMIT:-1}" \
    --with-healthcheck \
    "$@"

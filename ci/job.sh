#!/usr/bin/env bash
# A CI job's transcache, for GitHub's action (ci/github/) and GitLab's template (ci/gitlab/):
#   ci/job.sh start   install transcache from this checkout, start the proxy for the job
#   ci/job.sh stop    stop it, save the cache, print the job's hit summary
# `start` installs into a private venv in $TRANSCACHE_STATE_DIR (created with
# $TRANSCACHE_PYTHON, default python3), or uses the one $TRANSCACHE_VENV names; then both run
# ci/job.py with that venv's interpreter. Settings: the TRANSCACHE_* variables (docs/ci.md).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
state=${TRANSCACHE_STATE_DIR:?TRANSCACHE_STATE_DIR must name a directory for the proxy state}
venv=${TRANSCACHE_VENV:-$state/venv}

case "${1:-}" in
start)
    if [[ -z ${TRANSCACHE_VENV:-} ]]; then
        echo "transcache: installing from $(dirname "$here") into $venv"
        "${TRANSCACHE_PYTHON:-python3}" -m venv "$venv"
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$(dirname "$here")"
    fi
    ;;
stop)
    if [[ ! -x $venv/bin/python ]]; then
        echo "transcache: not installed in this job; nothing to stop"
        exit 0
    fi
    ;;
*)
    echo "usage: ci/job.sh start|stop" >&2
    exit 2
    ;;
esac
exec "$venv/bin/python" -u "$here/job.py" "$1"  # unbuffered: in order with its children

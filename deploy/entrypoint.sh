#!/bin/sh
# The image's entrypoint: one image, and the first argument picks the role
# (docs/operations.md, "Image"). Every role execs its program, so that program is PID 1
# and receives Kubernetes' SIGTERM itself (the web server's graceful drain needs it).
set -eu

usage() {
    cat >&2 <<'USAGE'
usage: entrypoint.sh ROLE [ARGS...]
  web [ARGS]       uvicorn: HTTP and websockets on 0.0.0.0:$PORT (default 8000)
  worker [ARGS]    a Celery worker
  beat [ARGS]      Celery beat, exactly one per deployment
  migrate [ARGS]   python manage.py migrate --noinput
  manage ARGS      python manage.py ARGS, e.g. `manage createsuperuser`
  COMMAND [ARGS]   any other program on PATH, run as given, e.g. `python -c ...`, `sh`
ARGS are added to the role's command line.
USAGE
}

# manage.py and the packages are one level up from this script (/app in the image).
cd "$(dirname "$0")/.."

if [ "$#" -eq 0 ]; then
    usage
    exit 2
fi
role=$1
shift

case "$role" in
web)
    # The README's production command ("Production serves with uvicorn");
    # tests/test_entrypoint.py keeps the two identical.
    exec uvicorn project.asgi:application --host 0.0.0.0 --port "${PORT:-8000}" \
        --ws realtime.wsserver:WebSocketProtocol \
        --ws-max-size 65536 --ws-per-message-deflate false \
        --timeout-graceful-shutdown 5 "$@"
    ;;
worker)
    # No -B (embedded beat) here, unlike `make worker`: beat runs alone, once (below).
    exec celery -A project worker -l info "$@"
    ;;
beat)
    # Its schedule file is CELERY_BEAT_SCHEDULE_FILENAME, under /tmp in the image.
    exec celery -A project beat -l info "$@"
    ;;
migrate)
    exec python manage.py migrate --noinput "$@"
    ;;
manage)
    exec python manage.py "$@"
    ;;
help | -h | --help)
    usage
    exit 0
    ;;
*)
    if command -v "$role" >/dev/null 2>&1; then
        exec "$role" "$@"
    fi
    echo "entrypoint.sh: '$role' is neither a role nor a program on PATH" >&2
    usage
    exit 2
    ;;
esac

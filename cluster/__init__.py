"""A local multi-pod cluster on loopback: `python -m cluster start|stop|status|drain|...`.

N uvicorn pods behind HAProxy, with their own PostgreSQL, Redis, a Celery worker and a
Prometheus scraping every pod, all started from Debian's packages into var/cluster/ and
detached, so the command returns. What runs where is in var/cluster/state.json; the
runbook is docs/operations.md, "A local multi-pod cluster". The app is reached only as
processes (uvicorn, celery, manage.py): nothing here imports it.
"""

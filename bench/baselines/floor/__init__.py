"""The floor: the Django Channels tutorial chat, adapted just enough to speak our protocol.

Served like the product: `DJANGO_SETTINGS_MODULE=bench.baselines.floor.settings
uvicorn bench.baselines.floor.asgi:application`.
"""

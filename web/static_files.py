"""WhiteNoise for an async Django: static files without a thread hop for every other request."""

from __future__ import annotations

import warnings
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.http import HttpRequest, HttpResponseBase
from whitenoise.middleware import WhiteNoiseMiddleware  # type: ignore[import-untyped]  # no stubs
from whitenoise.storage import (  # type: ignore[import-untyped]  # no stubs
    CompressedManifestStaticFilesStorage,
)


class StaticFilesMiddleware(WhiteNoiseMiddleware):  # type: ignore[misc]  # whitenoise is untyped
    """WhiteNoiseMiddleware, async-capable.

    WhiteNoise's middleware is sync only: under ASGI Django would run every request's
    whole middleware chain through its one sync thread, the API views included. Here only
    a static file's response is built in a thread (it opens and stats the file).
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        with warnings.catch_warnings():
            # Before `collectstatic` STATIC_ROOT does not exist yet: the finders serve frontend/.
            warnings.filterwarnings("ignore", message="No directory at", category=UserWarning)
            super().__init__(get_response)
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self.__acall__(request)
        return super().__call__(request)

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        if self.autorefresh:
            static_file = await sync_to_async(self.find_file)(request.path_info)
        else:
            static_file = self.files.get(request.path_info)
        if static_file is not None:
            serve: Callable[..., HttpResponseBase] = self.serve
            return await sync_to_async(serve, thread_sensitive=False)(static_file, request)
        response: Awaitable[HttpResponseBase] = self.get_response(request)
        return await response


class HashedStaticStorage(CompressedManifestStaticFilesStorage):  # type: ignore[misc]  # untyped
    """Hashed, compressed copies; `import ... from "./x.js";` in modules names the hashed x.js.

    Without the import rewriting, a hashed app.js would load its modules by their plain
    names, which are cached briefly and may not match the app.js that imports them.
    """

    support_js_module_import_aggregation = True

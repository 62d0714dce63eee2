"""The browser client's pages: the app shell and sign-up. The client itself is frontend/."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import UserCreationForm
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_http_methods


@login_required
@ensure_csrf_cookie
def app(request: HttpRequest) -> HttpResponse:
    """The chat: one page; frontend/app.js fills it in over the API and /ws/."""
    return render(request, "app.html")


@require_http_methods(["GET", "POST"])
def signup(request: HttpRequest) -> HttpResponse:
    """Django's UserCreationForm; the new user is logged in and sent to the app."""
    if request.user.is_authenticated:
        return redirect("home")
    form: UserCreationForm[Any] = UserCreationForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        return redirect("home")
    return render(request, "registration/signup.html", {"form": form})

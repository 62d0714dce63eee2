"""Read an HTML form the way a browser would submit it, so tests can post real admin forms."""

from __future__ import annotations

from html.parser import HTMLParser

Fields = dict[str, list[str]]


class _FormReader(HTMLParser):
    def __init__(self, form_id: str) -> None:
        super().__init__()
        self.form_id = form_id
        self.inside = False
        self.fields: Fields = {}
        self.select: str | None = None
        self.textarea: str | None = None

    def _add(self, name: str | None, value: str | None) -> None:
        if name:
            self.fields.setdefault(name, []).append(value or "")

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "form":
            self.inside = a.get("id") == self.form_id
        if not self.inside or "disabled" in a:
            return
        if tag == "input":
            kind = (a.get("type") or "text").lower()
            if kind in ("submit", "button", "image", "file", "reset"):
                return
            if kind in ("checkbox", "radio") and "checked" not in a:
                return
            default = "on" if kind in ("checkbox", "radio") else ""
            self._add(a.get("name"), a.get("value", default))
        elif tag == "select":
            self.select = a.get("name")
        elif tag == "option" and self.select is not None and "selected" in a:
            self._add(self.select, a.get("value"))
        elif tag == "textarea":
            self.textarea = a.get("name")
            self._add(self.textarea, "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self.inside = False
        elif tag == "select":
            self.select = None
        elif tag == "textarea":
            self.textarea = None

    def handle_data(self, data: str) -> None:
        if self.textarea is not None:
            self.fields[self.textarea][-1] += data


def form_fields(html: str, form_id: str) -> Fields:
    """What submitting the form with this id would send, field by field, as the page shows it."""
    reader = _FormReader(form_id)
    reader.feed(html)
    assert reader.fields, f"no form {form_id!r} with fields on the page"
    return reader.fields

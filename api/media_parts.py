"""Image and file content parts of user messages, checked and stored in the shape the Responses API returns.

The upstream is a Chat Completions endpoint: it takes images as URLs or data URLs and files as inline
base64 data, and has no access to an OpenAI Files API, so a `file_id` (or a file URL) is a 400 here rather
than a reference the model could never follow.
"""

from __future__ import annotations

from typing import Any

from api.errors import invalid

MEDIA_PART_TYPES = ("input_image", "input_file")
IMAGE_DETAILS = ("low", "high", "auto")
_IMAGE_SCHEMES = ("https://", "http://", "data:image/")


def media_part(raw: dict[str, Any], param: str) -> dict[str, Any]:
    if raw.get("type") == "input_image":
        return _image(raw, param)
    return _file(raw, param)


def _image(raw: dict[str, Any], param: str) -> dict[str, Any]:
    _no_file_id(raw, param, "image_url (a URL or a data URL)")
    url = raw.get("image_url")
    if not isinstance(url, str):
        raise invalid(f"'{param}' needs an 'image_url' string.", f"{param}.image_url")
    if not url.startswith(_IMAGE_SCHEMES):
        raise invalid(
            f"Invalid value for '{param}.image_url': expected an http(s) URL or a data:image/... URL.",
            f"{param}.image_url",
        )
    detail = raw.get("detail") or "auto"
    if detail not in IMAGE_DETAILS:
        raise invalid(
            f"Invalid value for '{param}.detail': expected one of {', '.join(IMAGE_DETAILS)}.", f"{param}.detail"
        )
    return {"type": "input_image", "image_url": url, "detail": detail}


def _file(raw: dict[str, Any], param: str) -> dict[str, Any]:
    _no_file_id(raw, param, "file_data with a filename")
    if raw.get("file_url") is not None:
        raise invalid(
            f"'{param}.file_url' is not supported: the upstream Chat Completions API takes files inline; "
            "send file_data (base64, or a data URL) with a filename.",
            f"{param}.file_url",
            "unsupported_value",
        )
    data, filename = raw.get("file_data"), raw.get("filename")
    if not isinstance(data, str) or not data:
        raise invalid(f"'{param}' needs a 'file_data' string (base64, or a data URL).", f"{param}.file_data")
    if not isinstance(filename, str) or not filename:
        raise invalid(f"'{param}' needs a 'filename' alongside its file_data.", f"{param}.filename")
    return {"type": "input_file", "filename": filename, "file_data": data}


def _no_file_id(raw: dict[str, Any], param: str, instead: str) -> None:
    if raw.get("file_id") is not None:
        raise invalid(
            f"'{param}.file_id' is not supported: this server has no Files API; send {instead}.",
            f"{param}.file_id",
            "unsupported_value",
        )

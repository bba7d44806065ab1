"""Connection settings shared by the examples."""

from __future__ import annotations

import os

URL = os.environ.get("UNMASK_URL", "http://127.0.0.1:8000/v1")
API_KEY = os.environ.get("UNMASK_API_KEY", "none")


def model_name(client) -> str:  # noqa: ANN001 - openai.OpenAI
    return os.environ.get("UNMASK_MODEL") or client.models.list().data[0].id

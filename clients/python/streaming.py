"""Streamed chat: the committed prefix arrives every denoise step; usage comes last."""

from __future__ import annotations

from common import API_KEY, URL, model_name
from openai import OpenAI

client = OpenAI(base_url=URL, api_key=API_KEY)
stream = client.chat.completions.create(
    model=model_name(client),
    messages=[{"role": "user", "content": "Explain list comprehensions."}],
    max_completion_tokens=96, stream=True, stream_options={"include_usage": True},
)
for chunk in stream:
    if chunk.choices:
        print(chunk.choices[0].delta.content or "", end="", flush=True)
    elif chunk.usage:
        print(f"\n[{chunk.usage.completion_tokens} tokens]")

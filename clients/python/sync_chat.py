"""Chat and completions with the official openai SDK (synchronous)."""

from __future__ import annotations

from common import API_KEY, URL, model_name
from openai import OpenAI

client = OpenAI(base_url=URL, api_key=API_KEY)
model = model_name(client)

chat = client.chat.completions.create(
    model=model,
    messages=[{"role": "system", "content": "You are concise."},
              {"role": "user", "content": "Write a Python function that adds two numbers."}],
    max_completion_tokens=64,
)
print(chat.choices[0].message.content, chat.choices[0].finish_reason, chat.usage)

completion = client.completions.create(
    model=model, prompt="def fibonacci(n):", max_tokens=48, stop=["\n\n"],
    extra_body={"return_token_ids": True, "threshold": 0.9},  # unmask extensions
)
choice = completion.choices[0]
print(repr(choice.text), choice.model_extra["token_ids"])

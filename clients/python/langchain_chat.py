"""LangChain against unmask (`pip install langchain-openai`). A custom base_url needs
stream_usage=True for token counts in streams; LangChain sends max_completion_tokens."""

from __future__ import annotations

from common import API_KEY, URL, model_name
from langchain_openai import ChatOpenAI
from openai import OpenAI

llm = ChatOpenAI(base_url=URL, api_key=API_KEY,
                 model=model_name(OpenAI(base_url=URL, api_key=API_KEY)),
                 max_completion_tokens=64, stream_usage=True, temperature=0)
print(llm.invoke("Write a haiku about diffusion models.").content)
for chunk in llm.stream("Count to five."):
    print(chunk.content, end="", flush=True)
print()

"""Many concurrent requests with AsyncOpenAI: they share denoise steps on the server."""

from __future__ import annotations

import asyncio
import time

from common import API_KEY, URL
from openai import AsyncOpenAI


async def main(n: int = 32) -> None:
    client = AsyncOpenAI(base_url=URL, api_key=API_KEY)
    model = (await client.models.list()).data[0].id
    t0 = time.perf_counter()
    results = await asyncio.gather(*(client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": f"Question {i}: what is {i} + {i}?"}],
        max_tokens=48) for i in range(n)))
    tokens = sum(r.usage.completion_tokens for r in results)
    print(f"{n} requests, {tokens} tokens in {time.perf_counter() - t0:.2f}s")


asyncio.run(main())

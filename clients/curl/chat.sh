#!/usr/bin/env bash
# Non-streamed chat completion.
set -euo pipefail
URL=${UNMASK_URL:-http://127.0.0.1:8000/v1}
curl -sS "$URL/chat/completions" \
  -H "Content-Type: application/json" -H "Authorization: Bearer ${UNMASK_API_KEY:-none}" \
  -d '{"messages": [{"role": "user", "content": "Write a Python function that adds two numbers."}],
       "max_completion_tokens": 64}'
echo

#!/usr/bin/env bash
# Streamed completion (SSE): one `data:` event per denoise step that grows the text.
set -euo pipefail
URL=${UNMASK_URL:-http://127.0.0.1:8000/v1}
curl -sSN "$URL/completions" \
  -H "Content-Type: application/json" -H "Authorization: Bearer ${UNMASK_API_KEY:-none}" \
  -d '{"prompt": "def fibonacci(n):", "max_tokens": 64, "stream": true,
       "stream_options": {"include_usage": true}, "return_token_ids": true}'

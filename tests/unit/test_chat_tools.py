"""Rendering tools and tool turns through the checkpoint's chat template (llada2-spec §6.4-6.5),
with client text never becoming special tokens."""

from __future__ import annotations

from pathlib import Path

from server.api.chat import render_chat_prompt
from server.api.protocol import ChatMessage, Tool
from server.model.tokenizer import TokenizerInfo

TOOL = Tool.model_validate({"type": "function", "function": {
    "name": "get_weather", "description": 'Weather; never emit <|mask|> or "<tool_call>"',
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}})


def test_tools_and_tool_turns_render_as_the_spec_says(tiny_llada2: Path) -> None:
    tok = TokenizerInfo(tiny_llada2)
    msgs = [ChatMessage.model_validate(m) for m in [
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "21 C"},
        {"role": "tool", "tool_call_id": "call_2", "content": "sunny"},
    ]]
    ids = render_chat_prompt(tok, msgs, [TOOL])
    text = tok.decode(ids, skip_special_tokens=False)
    assert text.startswith("<role>SYSTEM</role># Tools\n\nYou may call one or more functions")
    assert ('"description": "Weather; never emit <|mask|> or \\"<tool_call>\\""' in text)
    assert ('<role>ASSISTANT</role><tool_call>\n{"name": "get_weather", "arguments": '
            '{"city": "Paris"}}\n</tool_call><|role_end|>') in text
    assert ("<role>OBSERVATION</role>\n<tool_response>\n21 C\n</tool_response>\n"
            "<tool_response>\nsunny\n</tool_response><|role_end|>") in text
    assert text.endswith("<role>ASSISTANT</role>")
    # special-token text inside the tool description stayed ordinary text
    assert ids.count(tok.mask_id) == 0
    call_open = tok.hf.convert_tokens_to_ids("<tool_call>")
    assert ids.count(call_open) == 3  # the preamble's two and the assistant turn's, not ours


def test_without_tools_nothing_is_added(tiny_llada2: Path) -> None:
    tok = TokenizerInfo(tiny_llada2)
    ids = render_chat_prompt(tok, [ChatMessage(role="user", content="hi")])
    assert tok.decode(ids, skip_special_tokens=False) == (
        "<role>SYSTEM</role>detailed thinking off<|role_end|><role>HUMAN</role>hi<|role_end|>"
        "<role>ASSISTANT</role>")

"""Loss masks must cover exactly what the assistant says plus the token that stops its turn."""

import numpy as np
import pytest
from transformers import AutoTokenizer

from ia_jax.tokenization import ChatError, load_tokenizer, render_chat, stop_token_ids

CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the weather today?"},
    {"role": "assistant", "content": "Rain, then sun."},
    {"role": "user", "content": "Why is it going to rain?"},
    {"role": "assistant", "content": "A cloud is over the lazy dog.\nYes, 42 of them!"},
]
GENERATION_PROMPT = {
    "llama3": "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "chatml": "<|im_start|>assistant\n",
}
HEADER_TOKENS = {
    "llama3": ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>"],
    "chatml": ["<|im_start|>"],
}

# Qwen3's published chat template (Qwen/Qwen3-0.6B tokenizer_config.json), verbatim.
QWEN3_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\n\n' }}
    {%- endif %}
    {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {%- set content = message.content %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is defined and message.reasoning_content is not none %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in message.content %}
                {%- set content = message.content.split('</think>')[-1].lstrip('\n') %}
                {%- set reasoning_content = message.content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\n' + content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}
                    {{- '\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}"""

QWEN3_CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the weather today?"},
    {"role": "assistant", "content": "Rain, then sun.", "reasoning_content": "First think about the cloud."},
    {"role": "user", "content": "Why is it going to rain?"},
    {
        "role": "assistant",
        "content": "A cloud is over the lazy dog.",
        "reasoning_content": "Step by step: cloud, rain.",
    },
]


def masked_runs(chat):
    """Token ids of each maximal run of mask 1, in order."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], chat.loss_mask, [0]])))
    return [chat.ids[start:end] for start, end in zip(edges[::2], edges[1::2])]


def assistant_turns(tokenizer, messages):
    return [m["content"].strip() + tokenizer.eos_token for m in messages if m["role"] == "assistant"]


def qwen3_tokenizer(chatml):
    tokenizer = AutoTokenizer.from_pretrained(chatml.path)
    tokenizer.chat_template = QWEN3_TEMPLATE
    return tokenizer


def test_mask_is_exactly_assistant_content_and_stop(trained):
    tokenizer = trained.tokenizer
    chat = render_chat(tokenizer, CONVERSATION)
    assert chat.ids.dtype == np.int32 and chat.loss_mask.shape == chat.ids.shape
    assert set(np.unique(chat.loss_mask)) == {0, 1}
    assert [tokenizer.decode(run) for run in masked_runs(chat)] == assistant_turns(tokenizer, CONVERSATION)


def test_everything_else_is_unmasked(trained):
    tokenizer = trained.tokenizer
    chat = render_chat(tokenizer, CONVERSATION)
    text = tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    for turn in assistant_turns(tokenizer, CONVERSATION):
        text = text.replace(turn, "", 1)
    assert tokenizer.decode(chat.ids[chat.loss_mask == 0]) == text
    # Headers are never trained on; user turns end with the same stop token in llama3 but stay 0.
    for token in HEADER_TOKENS[trained.chat_format]:
        token_id = tokenizer.convert_tokens_to_ids(token)
        assert (chat.ids == token_id).any() and not chat.loss_mask[chat.ids == token_id].any()
    assert chat.loss_mask[chat.ids == tokenizer.eos_token_id].sum() == 2


def test_ids_decode_to_the_rendered_text(trained):
    tokenizer = trained.tokenizer
    chat = render_chat(tokenizer, CONVERSATION)
    assert tokenizer.decode(chat.ids) == tokenizer.apply_chat_template(CONVERSATION, tokenize=False)


def test_generation_prompt(trained):
    tokenizer = trained.tokenizer
    prompt = render_chat(tokenizer, CONVERSATION[:-1], add_generation_prompt=True)
    assert not prompt.loss_mask.any()
    user_turn_end = {"llama3": "<|eot_id|>", "chatml": "<|im_end|>\n"}[trained.chat_format]
    assert tokenizer.decode(prompt.ids).endswith(
        "Why is it going to rain?" + user_turn_end + GENERATION_PROMPT[trained.chat_format]
    )


def test_llama3_generation_prompt_is_a_token_prefix_of_the_full_chat(llama3):
    prompt = render_chat(llama3.tokenizer, CONVERSATION[:-1], add_generation_prompt=True)
    full = render_chat(llama3.tokenizer, CONVERSATION)
    assert np.array_equal(full.ids[: len(prompt.ids)], prompt.ids)
    assert full.loss_mask[len(prompt.ids) - 1] == 0 and full.loss_mask[len(prompt.ids)] == 1


def test_short_replies_that_also_occur_in_headers_and_earlier_turns(trained):
    tokenizer = trained.tokenizer
    messages = [
        {"role": "user", "content": "Answer with one letter: a or b?"},
        {"role": "assistant", "content": "a"},
        {"role": "user", "content": "Now say hi"},
        {"role": "assistant", "content": "hi"},
    ]
    # "a" also occurs in "<|start_header_id|>" and "assistant"; "hi" in the user turn before it.
    assert [tokenizer.decode(run) for run in masked_runs(render_chat(tokenizer, messages))] == assistant_turns(
        tokenizer, messages
    )


def test_whitespace_the_template_keeps_before_the_stop_token_is_trained_on(trained):
    tokenizer = trained.tokenizer
    messages = [{"role": "user", "content": "Hello?"}, {"role": "assistant", "content": "  Sure thing.\n\n"}]
    kept = {"llama3": "Sure thing.", "chatml": "Sure thing.\n\n"}[trained.chat_format]
    runs = masked_runs(render_chat(tokenizer, messages))
    assert [tokenizer.decode(run) for run in runs] == [kept + tokenizer.eos_token]


def test_qwen3_template_multi_turn_with_reasoning(chatml):
    tokenizer = qwen3_tokenizer(chatml)
    text = tokenizer.apply_chat_template(QWEN3_CONVERSATION, tokenize=False)
    # Not prefix-stable: the first reply's reasoning shows while it is the last turn, then is dropped.
    first_turn = tokenizer.apply_chat_template(QWEN3_CONVERSATION[:3], tokenize=False)
    assert "First think about the cloud." in first_turn and not text.startswith(first_turn)
    assert "First think about the cloud." not in text
    assert "<think>\nStep by step: cloud, rain.\n</think>\n\nA cloud is over the lazy dog.<|im_end|>" in text

    chat = render_chat(tokenizer, QWEN3_CONVERSATION)
    assert tokenizer.decode(chat.ids) == text
    assert [tokenizer.decode(run) for run in masked_runs(chat)] == [
        "Rain, then sun.<|im_end|>",
        "A cloud is over the lazy dog.<|im_end|>",
    ]


def test_qwen3_template_kwargs_reach_the_template(chatml):
    tokenizer = qwen3_tokenizer(chatml)
    prompt = render_chat(tokenizer, QWEN3_CONVERSATION[:-1], add_generation_prompt=True, enable_thinking=False)
    assert tokenizer.decode(prompt.ids).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert not prompt.loss_mask.any()


def test_content_the_template_rewrites_is_an_error(chatml):
    tokenizer = qwen3_tokenizer(chatml)
    messages = [dict(m) for m in QWEN3_CONVERSATION]
    messages[2] = {"role": "assistant", "content": "<think>\nFirst think.\n</think>\n\nRain, then sun."}
    with pytest.raises(ChatError, match=r"message 2 \(assistant\): content not found.*reasoning_content"):
        render_chat(tokenizer, messages)


def test_message_the_template_drops_is_an_error(llama3):
    tokenizer = AutoTokenizer.from_pretrained(llama3.path)
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] != 'system' %}{{ m['role'] + ': ' + m['content'] + '<|eot_id|>' }}"
        "{% endif %}{% endfor %}"
    )
    with pytest.raises(ChatError, match=r"message 0 \(system\): content not found"):
        render_chat(tokenizer, CONVERSATION)


@pytest.mark.parametrize(
    "messages, kwargs, match",
    [
        ([], {}, r"empty conversation"),
        ([{"role": "user", "content": "Hi"}, {"role": "tool", "content": "x"}], {}, r"message 1: role 'tool'"),
        ([{"role": "user", "content": "Hi"}, {"role": "assistant"}], {}, r"message 1 \(assistant\): no 'content'"),
        ([{"role": "user", "content": ["Hi"]}], {}, r"message 0 \(user\): content must be a str"),
        (
            [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": " \n"}],
            {},
            r"message 1 \(assistant\): empty",
        ),
        (CONVERSATION, {"add_generation_prompt": True}, r"message 4 \(assistant\): add_generation_prompt=True"),
    ],
)
def test_bad_conversations(llama3, messages, kwargs, match):
    with pytest.raises(ChatError, match=match):
        render_chat(llama3.tokenizer, messages, **kwargs)


def test_stop_token_ids(llama3, chatml):
    assert stop_token_ids(llama3.tokenizer) == [llama3.tokenizer.convert_tokens_to_ids("<|eot_id|>")]
    base = AutoTokenizer.from_pretrained(chatml.path, eos_token="<|endoftext|>")  # eos of a base model
    assert stop_token_ids(base) == sorted(base.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"]))


def test_load_tokenizer_gives_identical_ids(trained):
    loaded = load_tokenizer(trained.path)
    assert np.array_equal(render_chat(loaded, CONVERSATION).ids, render_chat(trained.tokenizer, CONVERSATION).ids)


def test_load_tokenizer_errors(tmp_path, llama3):
    with pytest.raises(ChatError, match=f"{tmp_path / 'missing'}: not a directory"):
        load_tokenizer(str(tmp_path / "missing"))
    with pytest.raises(ChatError, match=f"{tmp_path}: no loadable tokenizer"):
        load_tokenizer(str(tmp_path))
    no_template = AutoTokenizer.from_pretrained(llama3.path)
    no_template.chat_template = None
    no_template.save_pretrained(str(tmp_path / "plain"))
    with pytest.raises(ChatError, match=f"{tmp_path / 'plain'}: the tokenizer has no chat template"):
        load_tokenizer(str(tmp_path / "plain"))

#!/usr/bin/env python3
"""Writes the hand-written seed inputs of every fuzz target (fuzz/seeds/<target>/).

Binary layouts are documented at the top of each target in fuzz/fuzz_targets/.
Run from anywhere: python3 fuzz/seeds/make_seeds.py
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def field(b):
    if isinstance(b, str):
        b = b.encode()
    assert len(b) < 256
    return bytes([len(b)]) + b


# --- request_body: raw bodies -------------------------------------------------------------------
bodies = {
    "chat": '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"max_tokens":16}',
    "stream": '{"model":"m","stream":true,"stream_options":{"include_usage":false},"messages":[{"role":"user","content":[{"type":"text","text":"ab"},{"type":"image_url"}]}],"n":2,"user":" u1 "}',
    "completion": '{"model":"gpt-4o-mini","prompt":["a","b"],"max_completion_tokens":5,"metadata":{"user_id":7}}',
    "embedding": '{"model":"m","input":"some text","litellm_metadata":{"user":"x"},"safety_identifier":"s"}',
    "bad_model": '{"model":5}',
    "bad_stream": '{"model":"m","stream":"yes","max_tokens":-1}',
    "dup_keys": '{"model":"a","model":"m","stream":null,"max_tokens":1e3}',
    "not_object": '[1,2,{"model":"m"}]',
    "unicode": '{"model":"\\u00e9\\ud83d\\ude00","messages":[{"content":"\\u0000"}],"stream_options":5}',
}
for k, v in bodies.items():
    write("request_body", k, v)

# --- usage_sse: [flags][n][n chunk lengths][stream] ---------------------------------------------
head = '"id":"c","object":"chat.completion.chunk","model":"gpt"'
openai = (
    'data: {%s,"choices":[{"index":0,"delta":{"content":"Hel"}}]}\n\n'
    'data: {%s,"choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":"stop"}]}\n\n'
    'data: {%s,"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11,'
    '"prompt_tokens_details":{"cached_tokens":4},"completion_tokens_details":{"reasoning_tokens":1}}}\n\n'
    'data: [DONE]\n\n' % (head, head, head)
)
anthropic = (
    'event: message_start\ndata: {"type":"message_start","message":{"usage":{"input_tokens":5,'
    '"cache_read_input_tokens":3,"cache_creation_input_tokens":1,"output_tokens":1}}}\n\n'
    'event: content_block_delta\ndata: {"type":"content_block_delta","delta":{"type":"text_delta","text":"hey"}}\n\n'
    ': ping\n\n'
    'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":7}}\n\n'
)
responses = (
    'event: response.output_text.delta\r\ndata: {"type":"response.output_text.delta","delta":"abc"}\r\n\r\n'
    'event: response.completed\r\ndata: {"type":"response.completed","response":{"usage":'
    '{"input_tokens":3,"output_tokens":4,"input_tokens_details":{"cached_tokens":1}}}}\r\n\r\n'
)
multiline = 'id: 1\ndata: {"choices":[],\ndata: "usage":{"prompt_tokens":1}}\n\ndata\n\ndata:[DONE]'
write("usage_sse", "openai", bytes([0, 3, 1, 5, 250]) + openai.encode())
write("usage_sse", "anthropic", bytes([0, 2, 7, 3]) + anthropic.encode())
write("usage_sse", "responses_crlf", bytes([0, 1, 1]) + responses.encode())
write("usage_sse", "small_max", bytes([1, 40, 2, 9, 0]) + openai.encode())
write("usage_sse", "multiline", bytes([0, 0]) + multiline.encode())

# --- usage_json: [flags][n][n chunk lengths][body] ----------------------------------------------
write("usage_json", "chat", bytes([0, 2, 3, 11]) + b'{"id":"x","choices":[{"message":{"content":"hi","tool_calls":[{"function":{"arguments":"{}"}}]}}],"usage":{"prompt_tokens":10,"completion_tokens":3,"total_tokens":13}}')
write("usage_json", "anthropic", bytes([4, 1, 5]) + b'{"type":"message","usage":{"input_tokens":7,"cache_read_input_tokens":2,"output_tokens":12.0}}')
write("usage_json", "responses", bytes([0, 0]) + b'{"object":"response","usage":{"input_tokens":4,"output_tokens":5,"output_tokens_details":{"reasoning_tokens":2}}}')
write("usage_json", "overflow", bytes([1, 30, 0]) + b'{"usage":{"prompt_tokens":1,"completion_tokens":1}}')
write("usage_json", "embedding", bytes([0, 1, 250]) + b'{"object":"list","data":[],"usage":{"prompt_tokens":8,"total_tokens":8}}')

# --- credential: [mask][field per present header]...[field a][rest b] ---------------------------
# header order: x-litellm-api-key, authorization, api-key, x-api-key, x-goog-api-key,
# ocp-apim-subscription-key, x-custom-key; bit 7: custom header configured.
write("credential", "bearer", bytes([0b10]) + field("Bearer sk-1234567890abcdef") + field("abc") + b"abc")
write("credential", "basic", bytes([0b10]) + field("Basic  sk-x ") + field("") + b"")
write("credential", "malformed", bytes([0b10]) + field("sk-no-prefix"))
write("credential", "litellm_wins", bytes([0b11]) + field(" bearer sk-b ") + field("Bearer sk-a"))
write("credential", "custom", bytes([0b11000010]) + field("Bearer sk-a") + field("BEARER  sk-custom\t"))
write("credential", "unicode", bytes([0b1000]) + field("\u00a0sk-\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u2003") + field("x") + b"y")

# --- duration: [8 now][4 offset][4 time of day][text] -------------------------------------------
def dur(text, now=1_767_225_600, off=86_399 + 3600, tod=0):
    return struct.pack("<qII", now, off, tod) + text.encode()

for name, text in {
    "hours": "24h", "days": "7d", "month": "1mo", "months": "2mo", "weekly": " Weekly ",
    "minutes_ms": "1ms", "hr": "1hr", "huge": "99999999999999999999h", "zero": "0d",
    "tod": "09:05:07", "tz": "Asia/Kolkata", "tz_offset": "UTC+05:30", "etc": "Etc/GMT-14",
    "iso": "2026-11-26T15:04:05.123456+01:00", "iso_py": "2026-11-26 15:04:05+00:00",
}.items():
    write("duration", name, dur(text, tod=3600 * 9 if name == "days" else 0))
write("duration", "far_future", dur("9999999999d", now=253_402_300_000))

# --- config: YAML text --------------------------------------------------------------------------
write("config", "example", open(os.path.join(HERE, "..", "..", "envoy", "config.yaml")).read())
write("config", "full", """model_list:
  - model_name: gpt-4o
    litellm_params:
      model: openai/gpt-4o
      api_base: https://api.example.com:8443/openai/v1/
      api_key: os.environ/OPENAI_KEY
      rpm: 10
      tpm: 1000
      default_api_key_rpm_limit: 5
      input_cost_per_token: 2.5e-6
      output_cost_per_token: 0.00001
      cache_read_input_token_cost: 1.25e-6
    model_info:
      id: dep-1
      access_groups: [premium, beta]
      max_output_tokens: 4096
  - model_name: local
    litellm_params: {model: hosted_vllm/llama, api_base: "http://10.0.0.1"}
general_settings:
  master_key: sk-1234
  litellm_key_header_name: X-Key
  token_rate_limit_type: output
  rate_limit_window_size: 30
  disable_budget_reservation: true
litellm_settings:
  max_budget: 100.5
  budget_duration: 30d
  timezone: Asia/Tokyo
  budget_reset_time: "09:30"
  max_end_user_budget_id: b1
  unknown_setting: 1
environment_variables:
  A: 1
  B: os.environ/C
router_settings:
  routing_strategy: simple-shuffle
""")
write("config", "anchors", """base: &p {model: openai/x, api_base: "http://h:1/v1"}
model_list:
  - {model_name: a, litellm_params: *p}
  - {model_name: b, litellm_params: {<<: *p, input_cost_per_token: .nan}}
litellm_settings: {max_budget: .inf, timezone: "+05:45"}
""")
write("config", "empty", "")
write("config", "bad", "model_list: 5\n")

# --- routes: [field path][field base][field pattern][rest model] --------------------------------
write("routes", "chat", field("/v1/chat/completions?x=1") + field("/v1") + field("gpt-*") + b"gpt-4o")
write("routes", "embeddings", field("/openai/embeddings/") + field("/") + field("openai/*") + b"text-embedding-3-small")
write("routes", "models", field("/v1/models") + field("") + field("*a*b*") + b"xaxbx")
write("routes", "provider", field("/completions?") + field("/openai/v1/") + field("anthropic/*") + b"anthropic/claude")

# --- counters: [flags][field budget][field window][field gauge][8 now][8 estimate][8 actual][duration]
def ctr(flags, budget, window, gauge, now, est, act, d):
    return (bytes([flags]) + field(budget) + field(window) + field(gauge)
            + struct.pack("<qqq", now, est, act) + d.encode())

now_us = 1_767_225_600_000_000
write("counters", "fresh", ctr(0b0101011, "", "", "", now_us, 1000, 500, "1d"))
write("counters", "stored", ctr(0b11101111, "1767312000000000 5000 100", f"{now_us - 1000} 3 40", "2", now_us, 2000, 100, "1mo"))
write("counters", "garbage", ctr(0b01100011, "x y z", "-5 -6", "\xff", now_us, -1, -1, "24h"))
write("counters", "model_budget", ctr(0b00101010, "0 999999999 0", "0", "0", now_us, 10**9, 10**6, "30d"))

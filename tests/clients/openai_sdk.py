"""Drives `gpt2 serve` with the real `openai` Python SDK, as a user would:
python3 openai_sdk.py BASE_URL KEY. Prints one JSON line of what it saw;
tests/openai_sdk.rs checks it. Exits 77 when the SDK is not installed."""
import json
import sys

try:
    import openai
except ImportError:
    sys.exit(77)

base, key = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
out = {"version": openai.__version__}

r = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=8, n=3, seed=7)
out["n"] = len(r.choices)
out["usage"] = r.usage.completion_tokens

# The SDK's own streaming idiom: every chunk has a choice.
pieces = []
for chunk in client.completions.create(model="tiny", prompt="Hello", max_tokens=12, seed=3, stream=True):
    pieces.append(chunk.choices[0].text)
out["stream_text"] = "".join(pieces)
plain = client.completions.create(model="tiny", prompt="Hello", max_tokens=12, seed=3)
out["plain_text"] = plain.choices[0].text

# With include_usage the last chunk has usage and no choices.
last = None
for chunk in client.completions.create(model="tiny", prompt="Hello", max_tokens=4, stream=True,
                                       stream_options={"include_usage": True}):
    last = chunk
out["stream_usage"] = last.usage.completion_tokens if last.usage else None

e = client.completions.create(model="tiny", prompt="The cat sat", max_tokens=0, echo=True, logprobs=1)
out["echo_text"] = e.choices[0].text
out["echo_logprobs"] = e.choices[0].logprobs.token_logprobs

f = client.completions.create(model="tiny", prompt="Hello", max_tokens=5, logit_bias={"13": 100}, seed=1)
out["forced"] = f.choices[0].text

try:
    client.completions.create(model="tiny", prompt="a", suffix="b")
    out["suffix_status"] = 200
except openai.BadRequestError as err:
    out["suffix_status"] = err.status_code
    out["suffix_param"] = err.body.get("param") if isinstance(err.body, dict) else None

print(json.dumps(out))

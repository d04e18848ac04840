"""The server driven by OpenAI's own Python client (`openai`, pinned in $PARITY_CACHE/venv-client by
scripts/setup-references.sh), streaming and not, and its errors as the client raises them.

    python serve/tests/openai_client.py --url http://127.0.0.1:PORT --expect '{"completion": ..., "chat": ...}'

Run by serve/tests/openai_client.rs, which starts the server and computes the expected texts
with the engine's own generate. Exits 1 with the failed check's message.
"""

import argparse
import json
import sys

import openai

PROMPT = "The quick brown fox"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]


def check_models(client, expect):
    ids = [m.id for m in client.models.list().data]
    assert ids == [expect["model"]], ids


def check_completion(client, expect):
    r = client.completions.create(model=expect["model"], prompt=PROMPT, max_tokens=12, temperature=0)
    assert r.choices[0].text == expect["completion"], (r.choices[0].text, expect["completion"])
    assert r.choices[0].finish_reason in ("stop", "length"), r.choices[0].finish_reason
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens, r.usage


def check_completion_stream(client, expect):
    chunks = list(client.completions.create(model=expect["model"], prompt=PROMPT, max_tokens=12, temperature=0, stream=True))
    text = "".join(c.choices[0].text for c in chunks)
    assert text == expect["completion"], (text, expect["completion"])
    assert chunks[-1].choices[0].finish_reason in ("stop", "length"), chunks[-1]
    assert chunks[-1].usage.completion_tokens == len(chunks) - 1, (chunks[-1].usage, len(chunks))


def check_chat(client, expect):
    r = client.chat.completions.create(model=expect["model"], messages=MESSAGES, max_tokens=10, temperature=0)
    assert r.choices[0].message.role == "assistant", r.choices[0].message
    assert r.choices[0].message.content == expect["chat"], (r.choices[0].message.content, expect["chat"])


def check_chat_stream(client, expect):
    chunks = list(client.chat.completions.create(model=expect["model"], messages=MESSAGES, max_tokens=10, temperature=0, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant", chunks[0]
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == expect["chat"], (text, expect["chat"])
    assert chunks[-1].usage is not None and chunks[-1].choices[0].finish_reason is not None, chunks[-1]


def check_same_seed_same_text(client, expect):
    texts = {
        client.completions.create(model=expect["model"], prompt=PROMPT, max_tokens=12, temperature=1.0, seed=11).choices[0].text for _ in range(2)
    }
    assert len(texts) == 1, texts


def check_bad_request_is_raised_as_400(client, expect):
    for kwargs, param in [({"max_tokens": 0}, "max_tokens"), ({"temperature": 5}, "temperature"), ({"max_tokens": 100000}, "max_tokens")]:
        try:
            client.completions.create(model=expect["model"], prompt=PROMPT, **kwargs)
        except openai.BadRequestError as e:
            assert e.status_code == 400 and e.body["param"] == param, (kwargs, e.status_code, e.body)
        else:
            raise AssertionError(f"{kwargs} was accepted")


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--expect", required=True, help="JSON: model id, greedy completion and chat texts")
    args = p.parse_args(argv)
    expect = json.loads(args.expect)
    client = openai.OpenAI(base_url=f"{args.url}/v1", api_key="unused", max_retries=0, timeout=60)
    checks = [v for k, v in globals().items() if k.startswith("check_")]
    for check in checks:
        try:
            check(client, expect)
        except AssertionError as e:
            sys.exit(f"{check.__name__}: {e}")
        print(f"ok {check.__name__}")
    print(f"openai {openai.__version__}: {len(checks)} checks passed")


if __name__ == "__main__":
    main()

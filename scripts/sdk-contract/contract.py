#!/usr/bin/env python3
"""Drives `abl mock-server` with the official openai, anthropic and
google-genai SDKs and validates every body with the SDK's own pydantic types
(`model_validate` on the raw JSON, not attribute access: the SDKs build their
objects without validation, so a missing required field would otherwise go
unnoticed). Usage: contract.py PATH/TO/abl. Exits 1 if any check fails.

Run it through scripts/sdk-contract/run, which makes the venv."""

import json
import subprocess
import sys
import traceback
from datetime import datetime, timezone

import urllib.request

import anthropic
import openai
from anthropic.types import Message
from anthropic.types.shared import ErrorResponse as AnthropicErrorResponse
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as gtypes
from openai.types.chat import ChatCompletion
from openai.types.responses import Response
from openai.types.shared import ErrorObject

ABL = sys.argv[1] if len(sys.argv) > 1 else "target/debug/abl"
KEY = "sk-contract-test-key"
RESULTS = []


class Raw:
    """Plain JSON requests to the mock, for the bodies an SDK does not hand
    back as raw JSON."""

    def __init__(self, base, headers):
        self.base, self.headers = base, headers

    def request(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method, headers={**self.headers, "content-type": "application/json"})
        with urllib.request.urlopen(req) as r:
            return json.load(r)

    def get(self, path):
        return self.request("GET", path)

    def post(self, path, body):
        return self.request("POST", path, body)

    def patch(self, path, body):
        return self.request("PATCH", path, body)


class Mock:
    """`abl mock-server ARGS` on a free port."""

    def __init__(self, *args):
        self.proc = subprocess.Popen(
            [ABL, "mock-server", *args], stdout=subprocess.PIPE, text=True
        )
        line = self.proc.stdout.readline()
        self.url = line.strip().rsplit(" ", 1)[-1]
        assert self.url.startswith("http://127.0.0.1:"), line

    def close(self):
        self.proc.kill()
        self.proc.wait()


def check(name):
    def wrap(fn):
        try:
            fn()
            RESULTS.append((name, None))
        except Exception as e:  # noqa: BLE001 - every failure is reported
            RESULTS.append((name, "".join(traceback.format_exception_only(e)).strip()))
            if "-v" in sys.argv:
                traceback.print_exc()
        return fn

    return wrap


def expect(cond, what):
    if not cond:
        raise AssertionError(what)


def go_duration(s):
    """Seconds of an OpenAI reset header such as `1s`, `6m0s`, `20ms`."""
    total, num = 0.0, ""
    i = 0
    while i < len(s):
        c = s[i]
        if c.isdigit() or c == ".":
            num += c
            i += 1
            continue
        unit = "ms" if s[i : i + 2] == "ms" else c
        total += float(num) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
        num = ""
        i += len(unit)
    expect(num == "", f"reset {s!r} ends without a unit")
    return total


def openai_rate_headers(h, limit_requests, limit_tokens):
    for kind, limit in (("requests", limit_requests), ("tokens", limit_tokens)):
        expect(h.get(f"x-ratelimit-limit-{kind}") == str(limit), f"x-ratelimit-limit-{kind}: {h.get(f'x-ratelimit-limit-{kind}')}")
        remaining = int(h[f"x-ratelimit-remaining-{kind}"])
        expect(0 <= remaining <= limit, f"remaining-{kind} {remaining}")
        expect(0 <= go_duration(h[f"x-ratelimit-reset-{kind}"]) <= 60, f"reset-{kind} {h[f'x-ratelimit-reset-{kind}']}")


def anthropic_rate_headers(h, limit_requests, limit_tokens):
    for kind, limit in (("requests", limit_requests), ("tokens", limit_tokens)):
        expect(h.get(f"anthropic-ratelimit-{kind}-limit") == str(limit), f"anthropic-ratelimit-{kind}-limit: {h.get(f'anthropic-ratelimit-{kind}-limit')}")
        remaining = int(h[f"anthropic-ratelimit-{kind}-remaining"])
        expect(0 <= remaining <= limit, f"{kind}-remaining {remaining}")
        reset = datetime.fromisoformat(h[f"anthropic-ratelimit-{kind}-reset"].replace("Z", "+00:00"))
        ahead = (reset - datetime.now(timezone.utc)).total_seconds()
        expect(-5 <= ahead <= 65, f"{kind}-reset {reset} is {ahead:.1f}s away")


def main():
    rpm, tpm = 10000, 10000000
    mock = Mock("--rpm", str(rpm), "--tpm", str(tpm))
    # One request a minute, a mock for each family: the first call spends it.
    tight = [Mock("--rpm", "1"), Mock("--rpm", "1")]
    try:
        run_openai(mock, tight[0], rpm, tpm)
        run_anthropic(mock, tight[1], rpm, tpm)
        run_gemini(mock)
        run_batches(mock)
    finally:
        for m in [mock, *tight]:
            m.close()
    failed = [(n, e) for n, e in RESULTS if e]
    for n, e in RESULTS:
        print(("FAIL " if e else "ok   ") + n + (f"\n     {e}" if e else ""))
    print(f"{len(RESULTS) - len(failed)} of {len(RESULTS)} contract checks pass")
    sys.exit(1 if failed else 0)


# --- OpenAI: Responses and Chat Completions --------------------------------


def run_openai(mock, tight, rpm, tpm):
    client = openai.OpenAI(api_key=KEY, base_url=mock.url + "/v1", max_retries=0)

    @check("openai responses: Response.model_validate, output_text, usage, rate-limit headers")
    def _():
        raw = client.responses.with_raw_response.create(model="gpt-4o-mini", input="hello responses")
        body = Response.model_validate(raw.http_response.json())
        expect(body.output_text == "hello responses", body.output_text)
        expect(body.usage.input_tokens > 0 and body.usage.total_tokens == body.usage.input_tokens + body.usage.output_tokens, body.usage)
        expect(raw.parse().output_text == "hello responses", "the SDK's own parse")
        openai_rate_headers(raw.headers, rpm, tpm)

    @check("openai responses: instructions + messages input, cached and reasoning tokens")
    def _():
        raw = client.responses.with_raw_response.create(
            model="o4-mini",
            instructions="be brief",
            input=[{"role": "user", "content": "[[mock:cached:7]] [[mock:reasoning:3]] two"}],
        )
        body = Response.model_validate(raw.http_response.json())
        expect(body.usage.input_tokens_details.cached_tokens == 7, body.usage)
        expect(body.usage.output_tokens_details.reasoning_tokens == 3, body.usage)

    @check("openai responses: json_schema output validates and parses")
    def _():
        schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"], "additionalProperties": False}
        raw = client.responses.with_raw_response.create(
            model="gpt-4o-mini",
            input="a city",
            text={"format": {"type": "json_schema", "name": "city", "schema": schema, "strict": True}},
        )
        body = Response.model_validate(raw.http_response.json())
        expect(isinstance(json.loads(body.output_text)["city"], str), body.output_text)

    @check("openai responses: refusal and content-filter bodies validate")
    def _():
        for marker in ("refusal", "safety"):
            raw = client.responses.with_raw_response.create(model="gpt-4o-mini", input=f"[[mock:{marker}]]")
            Response.model_validate(raw.http_response.json())

    @check("openai chat: ChatCompletion.model_validate, content, usage, rate-limit headers")
    def _():
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=[{"role": "system", "content": "sys"}, {"role": "user", "content": "hello chat"}],
        )
        body = ChatCompletion.model_validate(raw.http_response.json())
        expect(body.choices[0].message.content == "hello chat", body.choices[0].message)
        expect(body.usage.prompt_tokens > 0, body.usage)
        openai_rate_headers(raw.headers, rpm, tpm)

    @check("openai chat: json_schema, refusal and content-filter bodies validate")
    def _():
        schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"], "additionalProperties": False}
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "a number"}],
            response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": schema, "strict": True}},
        )
        body = ChatCompletion.model_validate(raw.http_response.json())
        expect(isinstance(json.loads(body.choices[0].message.content)["n"], int), body.choices[0].message.content)
        for marker, finish in (("refusal", "stop"), ("safety", "content_filter")):
            raw = client.chat.completions.with_raw_response.create(model="m", messages=[{"role": "user", "content": f"[[mock:{marker}]]"}])
            body = ChatCompletion.model_validate(raw.http_response.json())
            expect(body.choices[0].finish_reason == finish, body.choices[0])

    @check("openai errors: 429 (retry-after, rate-limit headers), 400, 401, 500 raise the SDK's classes with ErrorObject bodies")
    def _():
        cases = [
            ("[[mock:429:3]]", openai.RateLimitError, 429),
            ("[[mock:400]]", openai.BadRequestError, 400),
            ("[[mock:context-length]]", openai.BadRequestError, 400),
            ("[[mock:insufficient-quota]]", openai.RateLimitError, 429),
            ("[[mock:500]]", openai.InternalServerError, 500),
            ("[[mock:503]]", openai.InternalServerError, 503),
        ]
        for prompt, cls, status in cases:
            try:
                client.responses.create(model="gpt-4o-mini", input=prompt)
                raise AssertionError(f"{prompt}: no error")
            except cls as e:
                expect(e.status_code == status, f"{prompt}: {e.status_code}")
                ErrorObject.model_validate(e.response.json()["error"])
                if prompt == "[[mock:429:3]]":
                    expect(e.response.headers.get("retry-after") == "3", e.response.headers)
                    openai_rate_headers(e.response.headers, rpm, tpm)
        bad = openai.OpenAI(api_key="invalid-key-123456", base_url=mock.url + "/v1", max_retries=0)
        try:
            bad.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
            raise AssertionError("no 401")
        except openai.AuthenticationError as e:
            ErrorObject.model_validate(e.response.json()["error"])

    @check("openai quota: the 429 of a spent quota says remaining 0 and when it resets")
    def _():
        c = openai.OpenAI(api_key=KEY, base_url=tight.url + "/v1", max_retries=0)
        c.chat.completions.create(model="m", messages=[{"role": "user", "content": "first"}])
        try:
            c.chat.completions.create(model="m", messages=[{"role": "user", "content": "second"}])
            raise AssertionError("no 429")
        except openai.RateLimitError as e:
            h = e.response.headers
            ErrorObject.model_validate(e.response.json()["error"])
            expect(h["x-ratelimit-remaining-requests"] == "0", h)
            expect(int(h["retry-after"]) >= 1, h)
            expect(go_duration(h["x-ratelimit-reset-requests"]) > 0, h)


# --- Anthropic Messages ----------------------------------------------------


def run_anthropic(mock, tight, rpm, tpm):
    # The SDK's default sends the key as `Authorization: Bearer`; the API
    # (and abl) also take `x-api-key`.
    client = anthropic.Anthropic(api_key=KEY, base_url=mock.url, max_retries=0)
    x_api_key = anthropic.Anthropic(api_key=None, auth_token=None, default_headers={"x-api-key": KEY}, base_url=mock.url, max_retries=0)
    bearer = anthropic.Anthropic(auth_token=KEY, base_url=mock.url, max_retries=0)

    def create(c, content, **kw):
        return c.messages.with_raw_response.create(
            model="claude-sonnet-4-5", max_tokens=64, messages=[{"role": "user", "content": content}], **kw
        )

    @check("anthropic messages (x-api-key): Message.model_validate, text, usage, rate-limit headers")
    def _():
        raw = create(x_api_key, "hello claude")
        body = Message.model_validate(raw.http_response.json())
        expect(body.content[0].text == "hello claude", body.content)
        expect(body.usage.input_tokens > 0 and body.usage.output_tokens > 0, body.usage)
        sent = raw.http_response.request.headers
        expect(sent.get("x-api-key") == KEY and "authorization" not in sent, "the SDK sent x-api-key alone")
        anthropic_rate_headers(raw.headers, rpm, tpm)

    @check("anthropic messages (SDK defaults and auth_token: Authorization Bearer) are accepted")
    def _():
        for c in (client, bearer):
            raw = create(c, "hello bearer")
            sent = raw.http_response.request.headers
            expect(sent.get("authorization") == f"Bearer {KEY}" and "x-api-key" not in sent, "the SDK sent Bearer alone")
            body = Message.model_validate(raw.http_response.json())
            expect(body.content[0].text == "hello bearer", body.content)

    @check("anthropic messages: cache_control write then read, tool-use structured output, refusal")
    def _():
        system = [{"type": "text", "text": "x" * 5000, "cache_control": {"type": "ephemeral"}}]
        first = Message.model_validate(create(client, "q1", system=system).http_response.json())
        second = Message.model_validate(create(client, "q2", system=system).http_response.json())
        expect(first.usage.cache_creation_input_tokens > 0, first.usage)
        expect(second.usage.cache_read_input_tokens == first.usage.cache_creation_input_tokens, second.usage)
        tool = {"name": "answer", "description": "d", "input_schema": {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}}
        body = Message.model_validate(
            create(client, "tool please", tools=[tool], tool_choice={"type": "tool", "name": "answer"}).http_response.json()
        )
        expect(body.stop_reason == "tool_use" and body.content[0].type == "tool_use", body)
        body = Message.model_validate(create(client, "[[mock:refusal]]").http_response.json())
        expect(body.stop_reason == "refusal", body.stop_reason)

    @check("anthropic errors: 429 (retry-after, rate-limit headers), 529, 400, 401, 500 raise the SDK's classes with ErrorResponse bodies")
    def _():
        cases = [
            ("[[mock:429:2]]", anthropic.RateLimitError, 429),
            ("[[mock:529]]", anthropic.OverloadedError, 529),
            ("[[mock:400]]", anthropic.BadRequestError, 400),
            ("[[mock:500]]", anthropic.InternalServerError, 500),
        ]
        for prompt, cls, status in cases:
            try:
                create(client, prompt)
                raise AssertionError(f"{prompt}: no error")
            except cls as e:
                expect(e.status_code == status, f"{prompt}: {e.status_code}")
                AnthropicErrorResponse.model_validate(e.response.json())
                if status == 429:
                    expect(e.response.headers.get("retry-after") == "2", e.response.headers)
                    anthropic_rate_headers(e.response.headers, rpm, tpm)
        bad = anthropic.Anthropic(api_key="invalid-key", base_url=mock.url, max_retries=0)
        try:
            create(bad, "x")
            raise AssertionError("no 401")
        except anthropic.AuthenticationError as e:
            AnthropicErrorResponse.model_validate(e.response.json())

    @check("anthropic quota: the 429 of a spent quota says remaining 0 and when it resets")
    def _():
        c = anthropic.Anthropic(api_key=KEY, base_url=tight.url, max_retries=0)
        create(c, "first")
        try:
            create(c, "second")
            raise AssertionError("no 429")
        except anthropic.RateLimitError as e:
            h = e.response.headers
            AnthropicErrorResponse.model_validate(e.response.json())
            expect(h["anthropic-ratelimit-requests-remaining"] == "0", h)
            expect(int(h["retry-after"]) >= 1, h)
            reset = datetime.fromisoformat(h["anthropic-ratelimit-requests-reset"].replace("Z", "+00:00"))
            expect(reset > datetime.now(timezone.utc), reset)


# --- Gemini generateContent and cachedContents ------------------------------


def run_gemini(mock):
    client = genai.Client(api_key=KEY, http_options=gtypes.HttpOptions(base_url=mock.url, api_version="v1beta"))
    http = Raw(mock.url + "/v1beta", {"x-goog-api-key": KEY})
    model = "gemini-2.5-flash"

    def raw_generate(body):
        return http.post(f"/models/{model}:generateContent", body)

    @check("gemini generateContent: the SDK's call, GenerateContentResponse.model_validate (extra fields forbidden)")
    def _():
        resp = client.models.generate_content(model=model, contents="hello gemini")
        expect(resp.text == "hello gemini", resp.text)
        expect(resp.usage_metadata.prompt_token_count > 0, resp.usage_metadata)
        body = raw_generate({"contents": [{"role": "user", "parts": [{"text": "[[mock:reasoning:4]] hi"}]}]})
        parsed = gtypes.GenerateContentResponse.model_validate(body)
        expect(parsed.usage_metadata.thoughts_token_count == 4, parsed.usage_metadata)

    @check("gemini generateContent: system instruction, json schema, safety block validate")
    def _():
        resp = client.models.generate_content(
            model=model,
            contents="a city",
            config=gtypes.GenerateContentConfig(
                system_instruction="be brief",
                response_mime_type="application/json",
                response_schema={"type": "OBJECT", "properties": {"city": {"type": "STRING"}}, "required": ["city"]},
            ),
        )
        expect(isinstance(json.loads(resp.text)["city"], str), resp.text)
        body = raw_generate({"contents": [{"parts": [{"text": "[[mock:safety]]"}]}]})
        parsed = gtypes.GenerateContentResponse.model_validate(body)
        expect(parsed.prompt_feedback.block_reason == gtypes.BlockedReason.SAFETY, parsed.prompt_feedback)

    @check("gemini cachedContents: create, get, list, update, generate with it, delete (CachedContent.model_validate)")
    def _():
        created = client.caches.create(
            model=model,
            config=gtypes.CreateCachedContentConfig(
                contents=[gtypes.Content(role="user", parts=[gtypes.Part(text="long context " * 400)])],
                system_instruction="you answer from the context",
                display_name="contract",
                ttl="300s",
            ),
        )
        expect(created.name.startswith("cachedContents/"), created.name)
        raw = http.get(f"/{created.name}")
        got = gtypes.CachedContent.model_validate(raw)
        expect(got.usage_metadata.total_token_count > 0, got.usage_metadata)
        listed = gtypes.ListCachedContentsResponse.model_validate(http.get("/cachedContents"))
        expect(any(c.name == created.name for c in listed.cached_contents), listed)
        expect(any(c.name == created.name for c in client.caches.list()), "the SDK's list")
        updated = client.caches.update(name=created.name, config=gtypes.UpdateCachedContentConfig(ttl="600s"))
        expect(updated.expire_time > created.expire_time, (updated.expire_time, created.expire_time))
        raw = http.patch(f"/{created.name}", {"ttl": "900s"})
        gtypes.CachedContent.model_validate(raw)
        resp = client.models.generate_content(model=model, contents="question", config=gtypes.GenerateContentConfig(cached_content=created.name))
        expect(resp.usage_metadata.cached_content_token_count > 0, resp.usage_metadata)
        client.caches.delete(name=created.name)
        try:
            client.caches.get(name=created.name)
            raise AssertionError("a deleted cache is still there")
        except genai_errors.ClientError as e:
            expect(e.code in (403, 404), e.code)

    @check("gemini errors: 429 with RetryInfo, per-day QuotaFailure, 400, 500 as the SDK's errors with google.rpc details")
    def _():
        cases = [
            ("[[mock:429-gemini:7]]", genai_errors.ClientError, 429, "RESOURCE_EXHAUSTED"),
            ("[[mock:quota-day]]", genai_errors.ClientError, 429, "RESOURCE_EXHAUSTED"),
            ("[[mock:400]]", genai_errors.ClientError, 400, "INVALID_ARGUMENT"),
            ("[[mock:500]]", genai_errors.ServerError, 500, "INTERNAL"),
        ]
        for prompt, cls, code, status in cases:
            try:
                client.models.generate_content(model=model, contents=prompt)
                raise AssertionError(f"{prompt}: no error")
            except cls as e:
                expect(e.code == code and e.status == status, f"{prompt}: {e.code} {e.status}")
                err = e.details["error"]
                expect(isinstance(err["message"], str) and err["code"] == code, err)
                for d in err.get("details", []):
                    expect(d["@type"].startswith("type.googleapis.com/google.rpc."), d)
                if prompt == "[[mock:429-gemini:7]]":
                    delays = [d["retryDelay"] for d in err["details"] if d["@type"].endswith("RetryInfo")]
                    expect(delays == ["7s"], delays)


# --- Batch APIs: Anthropic Message Batches, Gemini Batch Mode ----------------


def run_batches(mock):
    """The batch routes abl uses, driven by the SDKs (the mock's jobs end at
    once: --batch-processing-ms defaults to 0)."""
    import tempfile
    import time

    from anthropic.types.messages import MessageBatch, MessageBatchIndividualResponse

    client = anthropic.Anthropic(api_key=KEY, base_url=mock.url, max_retries=0)
    params = lambda text: {"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": [{"role": "user", "content": text}]}

    @check("anthropic message batches: create, retrieve, list, results, cancel through the SDK; MessageBatch and result lines validate")
    def _():
        raw = client.messages.batches.with_raw_response.create(
            requests=[{"custom_id": "ok-1", "params": params("hello batch")}, {"custom_id": "bad-2", "params": params("[[mock:400]] no")}]
        )
        batch = MessageBatch.model_validate(raw.http_response.json())
        expect(batch.request_counts.processing == 2, batch.request_counts)
        done = MessageBatch.model_validate(client.messages.batches.with_raw_response.retrieve(batch.id).http_response.json())
        expect(done.processing_status == "ended" and done.results_url, done)
        expect((done.request_counts.succeeded, done.request_counts.errored) == (1, 1), done.request_counts)
        results = {r.custom_id: r for r in client.messages.batches.results(batch.id)}
        for r in results.values():
            MessageBatchIndividualResponse.model_validate(r.model_dump())
        expect(results["ok-1"].result.type == "succeeded" and results["ok-1"].result.message.content[0].text == "hello batch", results["ok-1"])
        expect(results["bad-2"].result.type == "errored" and results["bad-2"].result.error.error.type == "invalid_request_error", results["bad-2"])
        expect(batch.id in [b.id for b in client.messages.batches.list(limit=100)], "listed")
        slow = Mock("--batch-processing-ms", "600000")
        try:
            c = anthropic.Anthropic(api_key=KEY, base_url=slow.url, max_retries=0)
            b = c.messages.batches.create(requests=[{"custom_id": "c-1", "params": params("later")}])
            cancelled = c.messages.batches.cancel(b.id)
            expect(cancelled.cancel_initiated_at is not None and cancelled.request_counts.canceled == 1, cancelled)
            expect([r.result.type for r in c.messages.batches.results(b.id)] == ["canceled"], "canceled result")
        finally:
            slow.close()

    gclient = genai.Client(api_key=KEY, http_options=gtypes.HttpOptions(base_url=mock.url, api_version="v1beta"))
    model = "gemini-2.5-flash"

    def until_done(name):
        for _ in range(50):
            job = gclient.batches.get(name=name)
            if job.done:
                return job
            time.sleep(0.05)
        raise AssertionError(f"{name} never ended")

    @check("gemini batch mode: inline job create, get, list, cancel through the SDK; BatchJob and its inline responses")
    def _():
        job = gclient.batches.create(
            model=model,
            src=[{"contents": [{"role": "user", "parts": [{"text": "hello inline"}]}]}, {"contents": [{"parts": [{"text": "[[mock:400]] no"}]}]}],
            config={"display_name": "contract-inline"},
        )
        expect(job.name.startswith("batches/") and job.display_name == "contract-inline", job)
        done = until_done(job.name)
        expect(done.state.name == "JOB_STATE_SUCCEEDED", done.state)
        inline = done.dest.inlined_responses
        expect(inline[0].response.text == "hello inline", inline[0])
        expect(inline[1].error is not None and inline[1].error.code == 3, inline[1])
        expect(job.name in [j.name for j in gclient.batches.list(config={"page_size": 100})], "listed")
        slow = Mock("--batch-processing-ms", "600000")
        try:
            c = genai.Client(api_key=KEY, http_options=gtypes.HttpOptions(base_url=slow.url, api_version="v1beta"))
            j = c.batches.create(model=model, src=[{"contents": [{"parts": [{"text": "later"}]}]}])
            c.batches.cancel(name=j.name)
            expect(c.batches.get(name=j.name).state.name == "JOB_STATE_CANCELLED", "cancelled")
        finally:
            slow.close()

    @check("gemini batch mode: a JSONL uploaded through the SDK's resumable upload, the job's responses file downloaded")
    def _():
        with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
            for i in range(3):
                f.write(json.dumps({"key": f"k{i}", "request": {"contents": [{"parts": [{"text": f"file {i}"}]}]}}) + "\n")
        uploaded = gclient.files.upload(file=f.name, config={"mime_type": "application/jsonl", "display_name": "contract-file"})
        expect(uploaded.name.startswith("files/"), uploaded)
        job = gclient.batches.create(model=model, src=uploaded.name, config={"display_name": "contract-file"})
        done = until_done(job.name)
        expect(done.state.name == "JOB_STATE_SUCCEEDED" and done.dest.file_name, done)
        lines = [json.loads(l) for l in gclient.files.download(file=done.dest.file_name).decode().splitlines()]
        by_key = {l["key"]: gtypes.GenerateContentResponse.model_validate(l["response"]) for l in lines}
        expect(sorted(by_key) == ["k0", "k1", "k2"] and by_key["k1"].text == "file 1", by_key)


if __name__ == "__main__":
    main()

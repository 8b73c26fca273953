"""ds4-server KV cache store wiring (SERVING.md §6.2 rules 8-10, §7.5, §7.6): checkpoints
survive a restart through --kv-disk-dir, corrupt files are ignored, and the RAM tier
serves a prompt that came back after another one.

Expected token counts come from HF `tokenizers` on the real vocabulary (independent of
the C tokenizer); "identical output" compares greedy generations of a cold prefill with
those of a restored checkpoint.
"""
import os
import pathlib
import signal
import struct

import pytest

from test_server_util import ASSISTANT, BOS, EOS, USER, Server, encode, render_user, tiny_model

SYS = "You are a meticulous assistant that answers in short sentences. " * 12


def body(question, max_tokens=6):
    return {"messages": [{"role": "system", "content": SYS}, {"role": "user", "content": question}], "think": False,
            "temperature": 0, "max_tokens": max_tokens}


class KvServer(Server):
    def stop(self):
        """One SIGTERM to ds4-server itself. Server.stop signals the `timeout` wrapper, which
        forwards SIGTERM to its whole process group, so ds4-server can see a second SIGTERM
        that exits at once (status 130) and skips the shutdown save this suite depends on."""
        if self.proc.poll() is None:
            try:
                kids = pathlib.Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
            except OSError:
                kids = []
            for k in kids:
                os.kill(int(k), signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except Exception:
                pass
        super().stop()


def start(tmp_path_factory, workdir, *extra):
    s = KvServer(tiny_model(tmp_path_factory.getbasetemp()), workdir, "--kv-cache-min-tokens", "32", *extra)
    s.wait_ready()
    return s


def ask(s, question, **kw):
    st, _, out = s.post("/v1/chat/completions", body(question, **kw))
    assert st == 200, out
    return out


def cached(out):
    return out["usage"]["prompt_tokens_details"]["cached_tokens"]


def test_disk_cache_survives_restart_and_corruption(tmp_path_factory):
    work = tmp_path_factory.mktemp("kvdisk")
    kvdir = work / "kv"
    n = len(encode(render_user("What is a prime?", system=SYS)))
    s = start(tmp_path_factory, work, "--kv-disk-dir", str(kvdir))
    try:
        s.unforce()
        first = ask(s, "What is a prime?")
        assert first["usage"]["prompt_tokens"] == n
        assert cached(first) == 0
    finally:
        s.stop()
    assert list(kvdir.glob("*.kv")), "no checkpoint written"

    s = start(tmp_path_factory, work, "--kv-disk-dir", str(kvdir))
    try:
        s.unforce()
        m0 = s.metrics()
        assert m0["ds4_kv_disk_bytes"] > 0
        again = ask(s, "What is a prime?")
        assert again["usage"]["prompt_tokens"] == n
        # the cold save stores the agent anchor (§7.5: the tokens before the first user
        # turn's <｜User｜>); the shutdown save holds prompt + reply, longer than this prompt
        assert cached(again) == len(encode(BOS + SYS))
        assert again["choices"][0]["message"] == first["choices"][0]["message"]
        m1 = s.metrics()
        assert m1["ds4_kv_disk_hits_total"] == m0["ds4_kv_disk_hits_total"] + 1
        assert m1["ds4_prompt_tokens_cached_total"] >= len(encode(BOS + SYS))
    finally:
        s.stop()

    # corrupt every file's body: the checksum rejects them, the request is served cold
    for f in kvdir.glob("*.kv"):
        b = bytearray(f.read_bytes())
        b[-1] ^= 0x5A
        b[200] ^= 0x5A
        f.write_bytes(bytes(b))
    s = start(tmp_path_factory, work, "--kv-disk-dir", str(kvdir))
    try:
        s.unforce()
        out = ask(s, "What is a prime?")
        assert cached(out) == 0
        assert out["choices"][0]["message"] == first["choices"][0]["message"]
        assert s.metrics()["ds4_kv_disk_hits_total"] == 0
    finally:
        s.stop()


def test_unusable_disk_dir_only_warns(tmp_path_factory):
    work = tmp_path_factory.mktemp("kvbad")
    blocker = work / "file"
    blocker.write_text("not a directory")
    s = start(tmp_path_factory, work, "--kv-disk-dir", str(blocker / "sub"))
    try:
        s.unforce()
        out = ask(s, "hello")
        assert out["usage"]["prompt_tokens"] > 0
    finally:
        s.stop()
    assert "kv" in s.log_path.read_text(errors="replace").lower()


def test_ram_tier_serves_a_returning_prompt(tmp_path_factory):
    work = tmp_path_factory.mktemp("kvram")
    s = start(tmp_path_factory, work, "--kv-ram-sessions", "2")
    try:
        eos = encode("<｜end▁of▁sentence｜>")
        s.force_ids(eos)  # answer = EOS at once: the live session is exactly the prompt
        na = len(encode(render_user("Question A about apples", system=SYS)))
        a1 = ask(s, "Question A about apples")
        b = ask(s, "Question B about bananas, quite different")
        a2 = ask(s, "Question A about apples")
        assert cached(a1) == 0
        assert a2["usage"]["prompt_tokens"] == na
        # B shares the system prompt with A, so the live session alone would reuse only the
        # common prefix; the RAM checkpoint of A restores all of it
        assert cached(a2) == na
        assert cached(b) < na
        m = s.metrics()
        assert m["ds4_kv_ram_hits_total"] >= 1
    finally:
        s.stop()


# ---- save policy (SERVING.md §7.5) ----------------------------------------------------------

def kv_files(kvdir):
    """[(reason, tokens)] of the *.kv files, from the header layout in ds4_kvstore.h."""
    out = []
    for f in sorted(pathlib.Path(kvdir).glob("*.kv")):
        b = f.read_bytes()
        assert b[:8] == b"DS4KVC\r\n" and struct.unpack_from("<I", b, 8)[0] == 3
        out.append((struct.unpack_from("<I", b, 84)[0], struct.unpack_from("<I", b, 92)[0]))
    return out


def test_cold_trim_align_and_continued_saves(tmp_path_factory):
    """No system prompt, so no agent anchor: the cold save keeps n - trim rounded down to the
    alignment; continued saves land on every multiple of the step (interval rounded up to
    the alignment) during prefill and decode, except the cold frontier."""
    work = tmp_path_factory.mktemp("kvpolicy")
    kvdir = work / "kv"
    q = "Describe the history of mathematics in detail, " * 9
    prompt = render_user(q)
    n = len(encode(prompt))
    min_t, trim, align, interval = 32, 8, 16, 40
    step = 48  # 40 rounded up to a multiple of 16
    gen = 30
    s = start(tmp_path_factory, work, "--kv-disk-dir", str(kvdir), "--kv-cache-boundary-trim-tokens", str(trim),
              "--kv-cache-boundary-align-tokens", str(align), "--kv-cache-continued-interval-tokens", str(interval))
    try:
        s.force_ids(encode(" one two three four five six seven eight nine ten" * 3)[:gen])
        st, _, out = s.post("/v1/chat/completions", {"messages": [{"role": "user", "content": q}], "think": False,
                                                     "max_tokens": gen})
        assert st == 200, out
        assert out["usage"]["prompt_tokens"] == n and out["usage"]["completion_tokens"] == gen
    finally:
        s.stop()
    cold = (n - trim) // align * align
    assert cold >= min_t and cold < n
    files = kv_files(kvdir)
    # decode checks the frontier before each step: live lengths n .. n+gen-1
    want_cont = {m for m in range(step, n + gen, step) if m >= min_t and m != cold}
    assert sorted(t for r, t in files if r == 1) == [cold]
    assert sorted(t for r, t in files if r == 2) == sorted(want_cont)
    assert [t for r, t in files if r == 4] == [n + gen]  # shutdown save


def conversation(system, first, replies, nexts):
    msgs = [{"role": "system", "content": system}, {"role": "user", "content": first}]
    for r, q in zip(replies, nexts):
        msgs += [{"role": "assistant", "content": r}, {"role": "user", "content": q}]
    return msgs


@pytest.mark.parametrize("tier", ["ram", "disk"])
def test_alternating_conversations_prefill_only_suffixes(tmp_path_factory, tier):
    """A, B, A, B, A with real (sampled, several-token) replies: from the third request on
    each prefill is exactly the new suffix (EOS + next user turn + assistant opener),
    tokenized independently with HF tokenizers."""
    work = tmp_path_factory.mktemp("kvab" + tier)
    extra = ["--kv-ram-sessions", "2"] if tier == "ram" else ["--kv-disk-dir", str(work / "kv")]
    s = start(tmp_path_factory, work, *extra)
    convs = {"A": ["Question A about apples and orchards", [], []],
             "B": ["Question B about bridges and rivers, quite different", [], []]}
    try:
        s.unforce()
        for i, c in enumerate("ABABA"):
            first, replies, nexts = convs[c]
            msgs = conversation(SYS, first, replies, nexts)
            st, _, out = s.post("/v1/chat/completions", {"messages": msgs, "think": False, "temperature": 0,
                                                         "max_tokens": 8})
            assert st == 200, out
            reply = out["choices"][0]["message"]["content"]
            assert out["usage"]["completion_tokens"] >= 2, out
            prefilled = out["usage"]["prompt_tokens"] - cached(out)
            if i >= 2:
                suffix = EOS + USER + nexts[-1] + ASSISTANT + "</think>"
                assert prefilled == len(encode(suffix)), (i, c, out["usage"], s.log_text()[-1500:])
            replies.append(reply)
            nexts.append(f"Follow-up {i} for {c}: tell me more")
        m = s.metrics()
        assert m["ds4_kv_ram_hits_total" if tier == "ram" else "ds4_kv_disk_hits_total"] >= 3
    finally:
        s.stop()


def test_restart_resumes_through_official_sdks(tmp_path_factory):
    """openai and anthropic clients: a conversation turn, a restart (shutdown save), the next
    turn prefills only its new suffix."""
    openai = pytest.importorskip("openai")
    anthropic = pytest.importorskip("anthropic")
    work = tmp_path_factory.mktemp("kvsdk")
    kvdir = work / "kv"
    s = start(tmp_path_factory, work, "--kv-disk-dir", str(kvdir))
    try:
        s.unforce()
        oc = openai.OpenAI(base_url=s.base + "/v1", api_key="unused", timeout=30, max_retries=0)
        msgs = [{"role": "system", "content": SYS}, {"role": "user", "content": "Name a prime number."}]
        r1 = oc.chat.completions.create(model="deepseek-v4-flash", messages=msgs, temperature=0, max_tokens=6,
                                        extra_body={"think": False})
        reply = r1.choices[0].message.content
        assert r1.usage.completion_tokens >= 2
    finally:
        s.stop()
    s = start(tmp_path_factory, work, "--kv-disk-dir", str(kvdir))
    try:
        s.unforce()
        oc = openai.OpenAI(base_url=s.base + "/v1", api_key="unused", timeout=30, max_retries=0)
        msgs2 = msgs + [{"role": "assistant", "content": reply}, {"role": "user", "content": "And another one?"}]
        r2 = oc.chat.completions.create(model="deepseek-v4-flash", messages=msgs2, temperature=0, max_tokens=6,
                                        extra_body={"think": False})
        suffix = EOS + USER + "And another one?" + ASSISTANT + "</think>"
        assert r2.usage.prompt_tokens - r2.usage.prompt_tokens_details.cached_tokens == len(encode(suffix))
        assert s.metrics()["ds4_kv_disk_hits_total"] == 1
        reply2 = r2.choices[0].message.content
    finally:
        s.stop()
    s = start(tmp_path_factory, work, "--kv-disk-dir", str(kvdir))
    try:
        s.unforce()
        ac = anthropic.Anthropic(base_url=s.base, api_key="unused", timeout=30, max_retries=0)
        am = [{"role": "user", "content": "Name a prime number."}, {"role": "assistant", "content": reply},
              {"role": "user", "content": "And another one?"}, {"role": "assistant", "content": reply2},
              {"role": "user", "content": "One more, please."}]
        r3 = ac.messages.create(model="deepseek-v4-flash", system=SYS, messages=am, max_tokens=6,
                                extra_body={"thinking": {"type": "disabled"}, "temperature": 0})
        suffix = EOS + USER + "One more, please." + ASSISTANT + "</think>"
        assert r3.usage.cache_creation_input_tokens == len(encode(suffix)), r3.usage
        assert r3.usage.cache_read_input_tokens > len(encode(BOS + SYS))
    finally:
        s.stop()

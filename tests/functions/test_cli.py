"""The `bitnet` command as a person uses it: `bitnet chat` driven in a pseudo-terminal (pexpect),
the same chat from a pipe, progress bars on a terminal and none in a pipe, shell completions,
the examples in every subcommand's help, and `bitnet serve`'s ready line."""
import json
import os
import re
import subprocess
import time

import pexpect
import pytest

from conftest import MODEL_ID, binary

# The line `bitnet chat` writes after each answer (on stderr, which the terminal shows too).
TURN = re.compile(
    r"\[prompt (\d+) tokens: (\d+) computed at [\d.]+ tok/s, (\d+) cached \| answer (\d+) tokens at [\d.]+ tok/s([^\]]*)\]"
)


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BITNET_", "API_KEY"))}
    env.update({"TERM": "xterm", "BITNET_THREADS": "1"})
    env.update(extra)
    return env


def spawn_chat(tiny_model, *args):
    child = pexpect.spawn(
        str(binary("bitnet")),
        ["chat", "--model", str(tiny_model), "--temperature", "0", *args],
        env=clean_env(),
        encoding="utf-8",
        codec_errors="replace",
        timeout=60,
        dimensions=(50, 200),
    )
    child.expect(r"bitnet chat: .*tokens of context")
    child.expect("> ")
    return child


def turn_stopped_by_ctrl_c(child, text):
    """Sends `text`, lets the answer stream a little, presses Ctrl-C; returns the turn line's
    numbers (prompt, computed, cached, answer)."""
    child.sendline(text)
    # The echo of the line, then the answer's first characters.
    child.expect_exact(text)
    child.expect(r"\S")
    time.sleep(0.3)
    child.sendintr()
    child.expect(TURN)
    prompt, computed, cached, answer = (int(child.match.group(i)) for i in range(1, 5))
    assert child.match.group(5) == ", stopped", child.match.group(0)
    child.expect("> ")
    return prompt, computed, cached, answer


def test_chat_in_a_terminal_two_turns_ctrl_c_reset_and_the_cache(tiny_model):
    # 3,000 tokens per answer: far longer than the moment before Ctrl-C.
    child = spawn_chat(tiny_model, "--max-tokens", "3000")
    try:
        p1, c1, k1, a1 = turn_stopped_by_ctrl_c(child, "Hello there, who are you?")
        assert (c1, k1) == (p1, 0), "the first turn has nothing cached"
        assert 0 < a1 < 3000, "Ctrl-C stopped the answer early"

        # The chat survived Ctrl-C; the second turn's prompt is the whole conversation, and
        # only what is new since the first answer is computed: the first turn and its answer
        # (but possibly the answer's last token, sampled and never fed) come from the cache.
        p2, c2, k2, a2 = turn_stopped_by_ctrl_c(child, "Tell me more.")
        new = p2 - (p1 + a1)
        assert new > 0
        assert p1 + a1 - 1 <= k2 <= p1 + a1, (p1, a1, k2)
        assert c2 == p2 - k2 and c2 <= new + 1, (p2, c2, k2, new)

        # Ctrl-C at the prompt does not leave.
        child.sendintr()
        child.expect_exact("Ctrl-C stops an answer")
        child.expect("> ")

        # /reset: the next prompt is a new conversation (no earlier turns in it).
        child.sendline("/reset")
        child.expect_exact("[new conversation]")
        child.expect("> ")
        p3, _, _, _ = turn_stopped_by_ctrl_c(child, "Hello there, who are you?")
        assert p3 == p1, "after /reset the same first message gives the same prompt"

        child.sendline("/exit")
        child.expect(r"\[session: 3 answers; prompt (\d+) tokens computed at [\d.]+ tok/s, (\d+) from the cache")
        assert int(child.match.group(2)) >= k2
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0, child.before


def test_chat_system_prompt_and_ctrl_d(tiny_model):
    child = spawn_chat(tiny_model, "--max-tokens", "3000", "--system", "You are terse.")
    try:
        p_with, _, _, _ = turn_stopped_by_ctrl_c(child, "Hi")
        child.sendline("/system")
        child.expect_exact("[no system prompt; new conversation]")
        child.expect("> ")
        p_without, _, _, _ = turn_stopped_by_ctrl_c(child, "Hi")
        assert p_without < p_with, "the system prompt was part of the first prompt"
        child.sendeof()
        child.expect(r"\[session: 2 answers")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0


def test_chat_from_a_pipe_answers_one_line_per_turn_with_the_chat_format(tiny_model, tmp_path):
    bitnet = binary("bitnet")
    r = subprocess.run(
        [bitnet, "chat", "--model", tiny_model, "--temperature", "0", "--max-tokens", "12"],
        input="Hello there, who are you?\n\n/help\nTell me more.\n",
        capture_output=True, text=True, env=clean_env(), timeout=120,
    )
    assert r.returncode == 0, r.stderr
    turns = TURN.findall(r.stderr)
    assert len(turns) == 2, r.stderr
    (p1, c1, k1, a1, _), (p2, c2, k2, a2, _) = [tuple(int(x) if x.isdigit() else x for x in t) for t in turns]
    assert k1 == 0 and k2 >= p1 + a1 - 1 and c2 == p2 - k2
    assert "[session: 2 answers" in r.stderr
    assert "\x1b" not in r.stdout + r.stderr, "no terminal escapes in a pipe"

    # The first answer is what `bitnet generate` gives for the same one-message chat.
    chat = tmp_path / "chat.json"
    chat.write_text(json.dumps([{"role": "user", "content": "Hello there, who are you?"}]))
    g = subprocess.run(
        [bitnet, "generate", "--model", tiny_model, "--chat", chat, "--temperature", "0",
         "--max-tokens", "12", "--json"],
        capture_output=True, text=True, env=clean_env(), check=True,
    )
    first = json.loads(g.stdout)
    assert first["prompt_tokens"] == p1
    assert r.stdout.startswith(first["text"] + "\n"), (r.stdout, first["text"])


def test_chat_refuses_a_message_over_the_context_and_goes_on(tiny_model):
    # 1,400 emoji of 3 tokens each: over the tiny model's 4,096 tokens (and short enough for
    # the line editor to take quickly).
    too_long = "\U0001F389" * 1400
    child = spawn_chat(tiny_model, "--max-tokens", "8")
    try:
        child.sendline(too_long)
        child.expect(r"error: with this message the conversation is (\d+) tokens, over the model's context of 4096")
        assert int(child.match.group(1)) > 4096
        child.expect("> ")
        child.sendline("Hi")
        child.expect(TURN)
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0

    # From a pipe the same error ends the run with status 1.
    r = subprocess.run([binary("bitnet"), "chat", "--model", tiny_model, "--max-tokens", "8"],
                       input=too_long + "\n", capture_output=True, text=True, env=clean_env(), timeout=60)
    assert r.returncode == 1 and "over the model's context of 4096" in r.stderr, r.stderr


@pytest.fixture
def slow_http(slow_model_url):
    # About 40 MB/s: the tiny model takes two seconds, long enough for the bar to be drawn.
    return slow_model_url(40)


def test_fetch_shows_a_progress_bar_on_a_terminal_and_plain_lines_in_a_pipe(slow_http, tmp_path):
    bitnet = str(binary("bitnet"))
    child = pexpect.spawn(bitnet, ["fetch", slow_http, "--cache-dir", str(tmp_path / "a"), "--concurrency", "1"],
                          env=clean_env(), encoding="utf-8", timeout=60, dimensions=(20, 160))
    child.expect(r"downloading \[[=> ]+\] [\d.]+ [KMG]iB/[\d.]+ MiB [\d.]+ [KMG]iB/s ETA")
    child.expect(r"\d+ bytes in [\d.]+ s \([\d.]+ MB/s\), sha256 [0-9a-f]{64}")
    child.expect(r"(/\S+\.gguf)")
    path = child.match.group(1)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0 and os.path.exists(path)

    r = subprocess.run([bitnet, "fetch", slow_http, "--cache-dir", tmp_path / "b", "--concurrency", "1"],
                       capture_output=True, text=True, env=clean_env(), timeout=60)
    assert r.returncode == 0, r.stderr
    assert "ETA" not in r.stderr and "\x1b" not in r.stderr and "\r" not in r.stderr, r.stderr
    assert re.fullmatch(r"\d+ bytes in [\d.]+ s \([\d.]+ MB/s\), sha256 [0-9a-f]{64}\n", r.stderr), r.stderr
    assert r.stdout.strip().endswith(".gguf")


def test_prepare_shows_its_progress_on_a_terminal(small_model, tmp_path):
    out = tmp_path / "prepared.gguf"
    child = pexpect.spawn(str(binary("bitnet")), ["prepare", str(small_model), "-o", str(out)],
                          env=clean_env(), encoding="utf-8", timeout=120, dimensions=(20, 160))
    child.expect(r"writing \[[=> ]+\] [\d.]+ [KMG]?i?B/[\d.]+ MiB")
    child.expect(r"wrote .*prepared\.gguf \((\d+) bytes, token embedding and output head as Q8_0\)")
    assert int(child.match.group(1)) == out.stat().st_size
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_completions_for_every_shell_name_the_subcommands():
    bitnet = binary("bitnet")
    for shell in ("bash", "zsh", "fish"):
        r = subprocess.run([bitnet, "completions", shell], capture_output=True, text=True, check=True)
        for sub in ("serve", "chat", "generate", "fetch", "prepare", "completions"):
            assert sub in r.stdout, (shell, sub)
    # bash loads it and completes `bitnet ch` to `chat`.
    script = subprocess.run([bitnet, "completions", "bash"], capture_output=True, text=True, check=True).stdout
    probe = script + '\nCOMP_WORDS=(bitnet ch); COMP_CWORD=1; COMP_LINE="bitnet ch"; COMP_POINT=9\n' \
        '_bitnet bitnet ch bitnet; printf "%s\\n" "${COMPREPLY[@]}"\n'
    r = subprocess.run(["bash", "-c", probe], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["chat"], r.stdout
    r = subprocess.run([bitnet, "completions", "nosuch"], capture_output=True, text=True)
    assert r.returncode != 0 and "nosuch" in r.stderr


def test_every_subcommand_help_has_examples():
    bitnet = binary("bitnet")
    top = subprocess.run([bitnet, "--help"], capture_output=True, text=True, check=True).stdout
    subs = re.findall(r"^  (\w+)\s{2,}", top.split("Commands:")[1].split("Options:")[0], re.M)
    subs = [s for s in subs if s != "help"]
    assert {"serve", "chat", "generate", "fetch", "prepare", "completions"} <= set(subs), subs
    for sub in subs:
        h = subprocess.run([bitnet, sub, "--help"], capture_output=True, text=True, check=True).stdout
        assert re.search(r"^Examples?:\n  bitnet " + sub, h, re.M), f"`bitnet {sub} --help` has no example:\n{h}"


def test_serve_prints_one_ready_line(start_server, tiny_model, tmp_path):
    srv = start_server(env={"BITNET_MODEL": str(tiny_model), "BITNET_THREADS": "2"})
    srv.wait_ready()
    deadline = time.time() + 10
    while time.time() < deadline and "ready at" not in srv.log():
        time.sleep(0.05)
    lines = [l for l in srv.log().splitlines() if l.startswith("bitnet serve:")]
    assert lines == [f"bitnet serve: ready at {srv.url}/v1 (model {MODEL_ID}, 2 threads, no API key)"], srv.log()

    key = tmp_path / "key"
    key.write_text("sekrit\n")
    keyed = start_server(env={"BITNET_MODEL": str(tiny_model)}, args=["--api-key-file", key])
    keyed.wait_ready()
    deadline = time.time() + 10
    while time.time() < deadline and "ready at" not in keyed.log():
        time.sleep(0.05)
    assert f"ready at {keyed.url}/v1" in keyed.log() and "API key required" in keyed.log(), keyed.log()


def test_generate_under_a_grammar_or_a_schema(tiny_model, tmp_path):
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"ok": {"type": "boolean"},
                                                                    "id": {"type": "integer"}},
                                  "required": ["ok", "id"]}))
    out = subprocess.run([binary("bitnet"), "generate", "--model", tiny_model, "--prompt", "x", "--json-schema",
                          schema, "--max-tokens", "60", "--seed", "2", "--json"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    v = json.loads(json.loads(out.stdout)["text"])
    assert isinstance(v["ok"], bool) and isinstance(v["id"], int)
    grammar = tmp_path / "g.gbnf"
    grammar.write_text('root ::= "n=" [0-9]{2}\n')
    out = subprocess.run([binary("bitnet"), "generate", "--model", tiny_model, "--prompt", "x", "--grammar", grammar,
                          "--max-tokens", "10"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and re.fullmatch(r"n=[0-9]{2}\n", out.stdout), (out.stdout, out.stderr)
    schema.write_text(json.dumps({"type": "string", "format": "email"}))
    out = subprocess.run([binary("bitnet"), "generate", "--model", tiny_model, "--prompt", "x", "--json-schema",
                          schema], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "'format'" in out.stderr, out.stderr


def test_tokenize_reads_a_vocabulary_only_gguf(tmp_path):
    """llama.cpp's vocabulary-only files (no tensors, no padding after the metadata), here the
    shipped Qwen2 one: `bitnet tokenize --model` gives llama.cpp's own test vector."""
    import gzip
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    vocab = tmp_path / "ggml-vocab-qwen2.gguf"
    vocab.write_bytes(gzip.decompress((root / "engine/data/qwen2-vocab.gguf.gz").read_bytes()))
    inputs = (root / "engine/tests/data/qwen2.inp").read_text().split("\n__ggml_vocab_test__\n")
    expected = (root / "engine/tests/data/qwen2.out").read_text().splitlines()
    # A vector with digits (one token each in Qwen2) and words.
    i = next(k for k, t in enumerate(inputs[:len(expected)]) if any(c.isdigit() for c in t) and " " in t)
    out = subprocess.run([binary("bitnet"), "tokenize", "--model", vocab, "--no-bos", inputs[i]],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [int(t) for t in expected[i].split()]


def test_bench_names_the_head_it_ran(tiny_model, tmp_path):
    """`bitnet bench` reports the head type it measured: the file's (F16 here, Q8_0 in a
    prepared file) or the one `--head` converted it to, never just the option's default."""
    prepared = tmp_path / "q8head.gguf"
    subprocess.run(
        [str(binary("bitnet")), "prepare", str(tiny_model), "-o", str(prepared), "--head", "q8_0"],
        check=True, capture_output=True, env=clean_env(), timeout=120,
    )

    def bench(model, *args):
        out = subprocess.run(
            [str(binary("bitnet")), "bench", "--model", str(model), "--pp", "4", "--tg", "2",
             "--reps", "1", "--json", *args],
            check=True, capture_output=True, text=True, env=clean_env(), timeout=120,
        ).stdout
        return json.loads(out.strip().splitlines()[-1])

    assert bench(tiny_model)["head_type"] == "F16"
    assert bench(prepared)["head_type"] == "Q8_0"
    assert bench(tiny_model, "--head", "q4_0")["head_type"] == "Q4_0"

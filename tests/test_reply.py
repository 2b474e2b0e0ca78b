"""Reply path: sentence splitting, templates, prompt, key handling, and the ReplyWorker end to end
with the real openai client against a real loopback HTTP server and real Piper synthesis."""

from __future__ import annotations

import logging
import random
import threading
import time
import json

import numpy as np
import pytest
import soundfile as sf

from redsg_edge.bench.chat_server import ChatServer, tokens_of, unused_port
from redsg_edge.config import Config
from redsg_edge.events import Reply, Transition
from redsg_edge.reply import (DEFAULT_TEMPLATES, LOCAL_PLACEHOLDER_KEY, STAGES, Exchange,
                              ReplyWorker, TemplatePicker, build_messages, clean_for_speech,
                              is_local_url, read_api_key, split_sentences)
from redsg_edge.voice import WavSink

from .helpers import shared_voice

REPLY = "I can see that. It is good to see you smiling again, and I am glad to be here."


def ev(frm="neutral", to="happy", confidence=0.8, previous_duration_s=12.0) -> Transition:
    return Transition(time.monotonic(), frm, to, confidence, previous_duration_s)


# ------------------------------------------------------------------ split_sentences

@pytest.mark.parametrize("buf, final, sentences, rest", [
    ("Hello there. How are", False, ["Hello there."], "How are"),
    ("Hello there.", False, ["Hello there."], ""),            # plain word + period: decided now
    ("Hello there", False, [], "Hello there"),
    ("Hello there", True, ["Hello there"], ""),
    ("Dr. Smith is here. He", False, ["Dr. Smith is here."], "He"),
    ("Call Dr.", False, [], "Call Dr."),                      # may go on: "Dr. Smith"
    ("Use e.g. this one. Then", False, ["Use e.g. this one."], "Then"),
    ("It costs 3.5 euros. Ok", False, ["It costs 3.5 euros."], "Ok"),
    ("It costs 3.", False, [], "It costs 3."),                # may be "3.5"
    ("Well... I think so. Yes", False, ["Well...", "I think so."], "Yes"),
    ("Well... maybe not. So", False, ["Well... maybe not."], "So"),
    ("Wait...", False, [], "Wait..."),
    ("Really?! No way. X", False, ["Really?!", "No way."], "X"),
    ("Oh! ", False, ["Oh!"], ""),
    ('He said "hi." Then', False, ['He said "hi."'], "Then"),
    ("J. R. R. Tolkien wrote it. And", False, ["J. R. R. Tolkien wrote it."], "And"),
    ("Lists, etc. and more. Then", False, ["Lists, etc. and more."], "Then"),
    ("line one\nline two", False, ["line one"], "line two"),
    ("I see\u2026 that is hard. So", False, ["I see\u2026 that is hard."], "So"),
    ("I see\u2026 That is hard. So", False, ["I see\u2026", "That is hard."], "So"),
    ("... ", True, [], ""),                                   # no letters: nothing to say
])
def test_split_sentences_table(buf, final, sentences, rest):
    got, remainder = split_sentences(buf, final=final)
    assert got == sentences
    assert remainder.strip() == rest


def test_split_sentences_long_clause_is_flushed_at_comma_then_at_space():
    clause = "when the light falls softly across the quiet garden at the end of a long day"
    got, rest = split_sentences(f"{clause}, and the birds {clause}", soft_limit=60)
    assert got == [clause + ","]
    assert rest.startswith(" and the birds")
    words = "word " * 60  # 300 characters, no punctuation at all
    got, rest = split_sentences(words, soft_limit=120, hard_limit=200)
    assert got and len(got[0]) <= 200 and got[0].startswith("word word")
    assert len(rest) < 200


def test_split_sentences_incremental_matches_whole_and_starts_early():
    text = ("Oh, hello! Dr. Jones said it would take 2.5 hours... That is long. "
            "Are you okay? I think so.")
    buf, out, first_at = "", [], None
    toks = tokens_of(text)
    for i, tok in enumerate(toks):
        got, buf = split_sentences(buf + tok)
        if got and first_at is None:
            first_at = i
        out += got
    out += split_sentences(buf, final=True)[0]
    assert out == ["Oh, hello!", "Dr. Jones said it would take 2.5 hours...", "That is long.",
                   "Are you okay?", "I think so."]
    assert first_at == 1  # "Oh, hello!" is out as soon as its token arrives


def test_clean_for_speech():
    assert clean_for_speech("**Nice** to see you \U0001F60A! [here](http://x) `ok`") == "Nice to see you ! here ok"


# ------------------------------------------------------------------ templates

def test_templates_never_repeat_and_are_deterministic():
    a = TemplatePicker({}, random.Random(7))
    b = TemplatePicker({}, random.Random(7))
    for emotion in DEFAULT_TEMPLATES:
        seq = [a.pick(emotion) for _ in range(200)]
        assert seq == [b.pick(emotion) for _ in range(200)]
        assert all(x != y for x, y in zip(seq, seq[1:])), emotion
        assert set(seq) == set(DEFAULT_TEMPLATES[emotion])  # all of them get used


@pytest.mark.parametrize("table, emotion, allowed", [
    ({"sad": ["One. A", "Two. B"]}, "sad", {"One. A", "Two. B"}),
    ({"sad": ["One. A"]}, "happy", set(DEFAULT_TEMPLATES["happy"])),   # missing -> defaults
    ({"sad": []}, "sad", set(DEFAULT_TEMPLATES["sad"])),                # empty -> defaults
    ({"sad": ["Only one."]}, "sad", {"Only one."}),                     # one: repeats, nothing else
])
def test_templates_table_and_fallback(table, emotion, allowed):
    p = TemplatePicker(table, random.Random(0))
    seq = [p.pick(emotion) for _ in range(20)]
    assert set(seq) <= allowed
    if len(allowed) > 1:
        assert all(x != y for x, y in zip(seq, seq[1:]))


# ------------------------------------------------------------------ prompt, key, endpoint

def test_prompt_carries_only_transitions_and_replies():
    e = Transition(100.0, "neutral", "sad", 0.72, 34.0,
                   {"face": {"probs": {"sad": 0.123456}, "age_s": 0.1}})
    hist = [Exchange(Transition(40.0, "happy", "neutral", 0.6, 10.0), "All calm. That's nice.", True),
            Exchange(Transition(70.0, "neutral", "angry", 0.5, 30.0, {"voice": {"probs": {}}}))]
    msgs = build_messages("SYS", e, hist)
    assert [m["role"] for m in msgs] == ["system", "user"]
    user = msgs[1]["content"]
    assert "neutral -> sad (confidence 0.72; neutral had lasted 34 s)" in user
    assert '60 s ago: happy -> neutral' in user and "All calm. That's nice." in user
    assert "30 s ago: neutral -> angry" in user and "did not reply" in user
    assert "0.123456" not in user and "probs" not in user and "face" not in user


def test_read_api_key_credentials_file_first(tmp_path):
    chat = Config().reply.chat
    (tmp_path / "openai_api_key").write_text(" sk-from-file\n")
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path), "OPENAI_API_KEY": "sk-from-env"}
    assert read_api_key(chat, env) == "sk-from-file"
    (tmp_path / "openai_api_key").write_text("\n")
    assert read_api_key(chat, env) == "sk-from-env"
    assert read_api_key(chat, {"OPENAI_API_KEY": "  "}) is None
    chat.api_key_env = "MY_KEY"
    assert read_api_key(chat, {"MY_KEY": "k2", "OPENAI_API_KEY": "no"}) == "k2"


@pytest.mark.parametrize("url, local", [
    ("http://127.0.0.1:8080/v1", True), ("http://localhost:11434/v1", True),
    ("http://[::1]:8080/v1", True), ("http://192.168.1.20:8080/v1", True),
    ("http://10.0.0.5/v1", True), ("http://gpu-box.local:8080/v1", True),
    ("https://api.openai.com/v1", False), ("http://8.8.8.8/v1", False),
])
def test_is_local_url(url, local):
    assert is_local_url(url) is local


# ------------------------------------------------------------------ the worker, end to end

@pytest.fixture(scope="module")
def voice():
    return shared_voice()


def make_cfg(base_url: str, **chat) -> Config:
    cfg = Config()
    cfg.reply.cooldown_s = 0.0
    cfg.voice.mic_gate_tail_s = 0.3
    c = cfg.reply.chat
    c.base_url = base_url
    c.retry_after_s = 0.0
    c.first_token_timeout_s = 1.0
    c.total_timeout_s = 8.0
    for k, v in chat.items():
        setattr(c, k, v)
    return cfg


class Run:
    """A started worker writing WAVs to a temp dir, collecting its events."""

    def __init__(self, cfg, voice, tmp_path, environ=None):
        self.events: list[Reply] = []
        self.cond = threading.Condition()
        self.sink = WavSink(tmp_path / "wav")
        self.w = ReplyWorker(cfg, voice=voice, sink=self.sink, on_event=self._on, rng=random.Random(1),
                             environ=environ if environ is not None else {})
        self.w.start(warm=False)

    def _on(self, rec):
        assert isinstance(rec, Reply), rec  # the typed event, not a dict
        with self.cond:
            self.events.append(rec)
            self.cond.notify_all()

    def reply(self, e=None, timeout=20.0) -> Reply:
        n = len(self.events)
        assert self.w.submit(e or ev())
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.events) > n, timeout), "no reply"
        return self.events[-1]

    def close(self):
        assert self.w.stop(5.0)


@pytest.fixture
def run_factory(voice, tmp_path):
    runs = []

    def make(cfg, environ=None):
        r = Run(cfg, voice, tmp_path, environ)
        runs.append(r)
        return r
    yield make
    for r in runs:
        r.close()


def assert_spoken(rec: Reply, sink: WavSink) -> np.ndarray:
    """The reply became real, non-silent speech in a WAV of plausible duration."""
    path = sink.paths[-1]
    pcm, rate = sf.read(path, dtype="int16")
    assert rate == 22050
    dur = len(pcm) / rate
    assert dur == pytest.approx(rec.audio_s, abs=0.01)
    n_chars = len(rec.text)
    assert 0.02 * n_chars < dur < 0.15 * n_chars + 1.0, (dur, rec.text)
    assert np.abs(pcm).max() > 3000
    assert np.sqrt(np.mean(pcm.astype(np.float64) ** 2)) > 300
    ts = rec.timestamps
    assert ts["submitted"] <= ts["first_sentence"] <= ts["first_pcm"] <= ts["first_sample"] <= ts["done"]
    return pcm


def assert_alive(r: Run):
    assert r.w.alive
    assert time.monotonic() - r.w.heartbeat < 2.0


def test_streamed_chat_reply_is_spoken_sentence_by_sentence(run_factory):
    with ChatServer(reply=REPLY, ttft_s=0.3, inter_token_s=0.12) as srv:
        r = run_factory(make_cfg(srv.base_url))
        rec = r.reply(ev("neutral", "happy"))
        assert (rec.source, rec.cause, rec.truncated) == ("chat", None, False)
        assert rec.text == REPLY and rec.sentences == 2
        ts = rec.timestamps
        assert ts["first_token"] - ts["chat_request"] >= 0.29
        # the first sentence went to Piper, and speech started, while the stream was still
        # arriving (~2 s of tokens after the first)
        last_token_at = ts["chat_request"] + 0.3 + 0.12 * (len(tokens_of(REPLY)) - 1)
        assert ts["first_sentence"] < last_token_at - 1.0
        assert ts["first_pcm"] < last_token_at
        assert_spoken(rec, r.sink)
        req = srv.requests[-1]
        assert req["body"]["stream"] is True and req["body"]["max_tokens"] == 60
        assert req["authorization"] == f"Bearer {LOCAL_PLACEHOLDER_KEY}"  # loopback, no key set
        assert_alive(r)


def test_reply_record_is_the_documented_event_log_line(run_factory):
    """``Reply.to_json()`` is the ``{"type": "reply", ...}`` line docs/architecture.md documents:
    its keys in order, the transition it answers, stage stamps and latencies, JSON-able."""
    with ChatServer(reply=REPLY) as srv:
        r = run_factory(make_cfg(srv.base_url))
        e = ev("sad", "happy")
        rec = r.reply(e)
    assert rec.transition is e and rec.t == e.t and rec.type == "reply"
    j = json.loads(json.dumps(rec.to_json()))
    assert list(j) == ["type", "t", "from", "to", "source", "cause", "skipped", "truncated",
                       "text", "sentences", "audio_s", "timestamps", "latency_s"]
    assert (j["type"], j["t"], j["from"], j["to"]) == ("reply", e.t, "sad", "happy")
    assert (j["source"], j["cause"], j["skipped"], j["truncated"]) == ("chat", None, False, False)
    assert (j["text"], j["sentences"]) == (REPLY, 2)
    assert j["audio_s"] == round(rec.audio_s, 3) > 1.0
    assert list(j["timestamps"]) == list(STAGES) and j["timestamps"]["transition"] == e.t
    assert list(j["latency_s"]) == list(STAGES[2:])
    assert j["latency_s"]["done"] == round(j["timestamps"]["done"] - j["timestamps"]["submitted"], 4)
    assert rec.first_audio_s == j["latency_s"]["first_sample"] is not None


def test_submit_takes_a_transition_only(run_factory):
    r = run_factory(make_cfg("https://api.example.invalid/v1"))
    with pytest.raises(TypeError, match="events.Transition"):
        r.w.submit({"t": 1.0, "from": "neutral", "to": "happy"})
    assert r.w.stats["submitted"] == 0


FAILURES = [  # (server settings, chat settings, expected cause)
    ({"mode": "401"}, {}, "http_401"),
    ({"mode": "429", "retry_after": 0}, {}, "http_429"),
    ({"mode": "500"}, {}, "http_5xx"),
    ({"mode": "stall", "fail_after": 2}, {}, "stall"),
    ({"mode": "malformed", "fail_after": 1}, {}, "malformed_stream"),
    ({"mode": "bad_chunk", "fail_after": 0}, {}, "malformed_stream"),
    ({"ttft_s": 2.0}, {"first_token_timeout_s": 0.5}, "first_token_timeout"),
    ({"inter_token_s": 0.3, "reply": "It is good to see you smiling again and I am glad to be here."},
     {"total_timeout_s": 1.0}, "total_timeout"),
]


@pytest.mark.parametrize("server, chat, cause", FAILURES, ids=[c for _, _, c in FAILURES])
def test_chat_failure_falls_back_to_offline_speech(run_factory, server, chat, cause):
    with ChatServer(**{"reply": REPLY, **server}) as srv:
        r = run_factory(make_cfg(srv.base_url, **chat))
        rec = r.reply(ev("neutral", "sad"))
        assert (rec.source, rec.cause) == ("offline", cause)
        assert rec.text in DEFAULT_TEMPLATES["sad"]
        assert_spoken(rec, r.sink)
        ts = rec.timestamps
        # the fallback is not late: deadline + one synthesis at most
        limit = {"first_token_timeout": 0.5, "stall": 1.0, "total_timeout": 1.0}.get(cause, 0.0)
        assert ts["first_pcm"] - ts["chat_request"] < limit + 2.5
        assert_alive(r)
        # the same worker recovers as soon as the endpoint does
        srv.mode, srv.ttft_s, srv.inter_token_s, srv.reply = "normal", 0.0, 0.0, REPLY
        if cause == "total_timeout":
            # 1 s holds the fallback's deadline, not a whole two-sentence reply spoken on a
            # loaded machine: the recovery gets the normal budget (a live reload)
            r.w.reload(make_cfg(srv.base_url))
        rec2 = r.reply(ev("sad", "happy"))
        assert rec2.source == "chat" and rec2.text == REPLY
        assert_spoken(rec2, r.sink)
        assert len(r.sink.paths) == 2


def test_connection_refused_falls_back(run_factory):
    r = run_factory(make_cfg(f"http://127.0.0.1:{unused_port()}/v1"))
    rec = r.reply(ev("happy", "fear"))
    assert (rec.source, rec.cause) == ("offline", "unreachable")
    assert rec.timestamps["first_pcm"] - rec.timestamps["chat_request"] < 2.5
    assert_spoken(rec, r.sink)
    assert_alive(r)


def test_no_key_for_remote_endpoint_never_contacts_it(run_factory):
    r = run_factory(make_cfg("https://api.example.invalid/v1"), environ={})
    rec = r.reply(ev("neutral", "angry"))
    assert (rec.source, rec.cause) == ("offline", "no_api_key")
    assert rec.timestamps["chat_request"] is None
    assert_spoken(rec, r.sink)
    assert_alive(r)


def test_stall_after_first_sentence_keeps_what_was_said(run_factory):
    with ChatServer(reply=REPLY, mode="stall", fail_after=6) as srv:  # "I can see that. It is"
        r = run_factory(make_cfg(srv.base_url))
        rec = r.reply()
        assert (rec.source, rec.cause, rec.truncated) == ("chat", "stall", True)
        assert rec.text == "I can see that."  # the unfinished "It is" is not spoken
        assert_spoken(rec, r.sink)


def test_429_retry_after_is_honoured_then_recovery_is_logged(run_factory, caplog):
    caplog.set_level(logging.DEBUG)
    with ChatServer(reply=REPLY, mode="429", retry_after=4) as srv:
        r = run_factory(make_cfg(srv.base_url))
        first = r.reply()
        assert first.cause == "http_429"
        retry_at = first.timestamps["chat_request"] + 4
        rec = r.reply()  # within Retry-After: offline without asking the server
        assert rec.timestamps["submitted"] < retry_at
        assert (rec.source, rec.cause, rec.skipped) == ("offline", "http_429", True)
        assert len(srv.requests) == 1
        srv.mode = "normal"
        time.sleep(max(0.0, retry_at + 0.5 - time.monotonic()))  # + time to get the 429
        assert r.reply().source == "chat"
        assert len(srv.requests) == 2
    msgs = [rec.getMessage() for rec in caplog.records if rec.name.startswith("redsg_edge.reply")]
    assert sum("answering again" in m for m in msgs) == 1


def test_outage_is_logged_once_not_per_call(run_factory, caplog):
    caplog.set_level(logging.DEBUG)
    port = unused_port()
    r = run_factory(make_cfg(f"http://127.0.0.1:{port}/v1"))
    for _ in range(3):
        assert r.reply().cause == "unreachable"
    warnings = [x for x in caplog.records
                if x.name.startswith("redsg_edge.reply") and x.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "unreachable" in warnings[0].getMessage()
    with ChatServer(reply=REPLY) as srv:  # the endpoint comes back (on a new port: reload)
        cfg = make_cfg(srv.base_url)
        r.w.reload(cfg)
        assert r.reply().source == "chat"


def test_api_key_never_logged(run_factory, caplog, tmp_path):
    caplog.set_level(logging.DEBUG)  # every logger, SDK and HTTP client included
    secret = "sk-test-S3CRET-abcdef0123456789"
    with ChatServer(reply=REPLY, api_key="sk-the-right-one") as srv:
        environ = {"OPENAI_API_KEY": secret}
        r = run_factory(make_cfg(srv.base_url), environ=environ)
        rec = r.reply()
        assert rec.cause == "http_401"
        assert srv.requests[-1]["authorization"] == f"Bearer {secret}"  # it was really used ...
        assert any("[redacted]" in x.getMessage() for x in caplog.records)  # ... echoed, redacted
        # the credential file wins over the environment
        cred = tmp_path / "cred"
        cred.mkdir()
        (cred / "openai_api_key").write_text("sk-the-right-one\n")
        environ["CREDENTIALS_DIRECTORY"] = str(cred)  # read again at reload
        r.w.reload(make_cfg(srv.base_url))
        assert r.reply().source == "chat"
    for x in caplog.records:
        assert secret not in x.getMessage()
        assert "sk-the-right-one" not in x.getMessage()
    assert secret not in repr(r.events)


def test_emotion_change_while_speaking_is_not_answered(run_factory):
    """The rule: one reply in flight; a transition during it (or the cooldown) is dropped, the
    current utterance finishes, and the dropped transition enters the next prompt's history."""
    with ChatServer(reply=REPLY, ttft_s=0.4) as srv:
        cfg = make_cfg(srv.base_url)
        cfg.reply.cooldown_s = 1.0
        r = run_factory(cfg)
        assert r.w.submit(ev("neutral", "sad"))
        time.sleep(0.1)
        assert not r.w.submit(ev("sad", "angry"))      # in flight: dropped
        with r.cond:
            assert r.cond.wait_for(lambda: len(r.events) == 1, 20)
        first = r.events[0]
        assert (first.transition.to_emotion, first.source, first.truncated) == ("sad", "chat", False)
        assert first.text == REPLY                    # finished, not cut off
        assert not r.w.submit(ev("angry", "fear"))     # cooldown: dropped
        assert r.w.stats["dropped_busy"] == 1 and r.w.stats["dropped_cooldown"] == 1
        time.sleep(1.05)
        rec = r.reply(ev("fear", "happy"))
        assert rec.transition.to_emotion == "happy" and len(r.events) == 2 and len(r.sink.paths) == 2
        prompt = srv.requests[-1]["body"]["messages"][1]["content"]
        assert "neutral -> sad" in prompt and REPLY in prompt
        assert "sad -> angry" in prompt and "angry -> fear" in prompt and "did not reply" in prompt
        assert prompt.rstrip().endswith("Now: fear -> happy (confidence 0.80; fear had lasted 12 s). "
                                         "Reply to this change.")


def test_mic_is_gated_while_speaking_plus_tail(run_factory):
    with ChatServer(reply=REPLY, ttft_s=0.3) as srv:
        r = run_factory(make_cfg(srv.base_url))
        t0 = time.monotonic()
        assert r.w.submit(ev())
        assert not r.w.mic_gated(t0)                    # nothing said yet
        while not r.w.speaking and time.monotonic() - t0 < 10:
            time.sleep(0.005)
        assert r.w.mic_gated(time.monotonic())
        with r.cond:
            assert r.cond.wait_for(lambda: r.events, 20)
        rec = r.events[0]
        start = rec.timestamps["first_pcm"]
        end = max(rec.timestamps["done"], start + rec.audio_s)
        assert not r.w.mic_gated(start - 0.01)
        assert r.w.mic_gated(start + rec.audio_s - 0.05)   # audio still "playing"
        assert r.w.mic_gated(end + 0.25)                        # tail 0.3 s
        assert not r.w.mic_gated(end + 0.35)


def test_reload_applies_templates_and_chat_switch(run_factory):
    with ChatServer(reply=REPLY) as srv:
        r = run_factory(make_cfg(srv.base_url))
        assert r.reply().source == "chat"
        cfg = make_cfg(srv.base_url, enabled=False)
        cfg.reply.templates = {"happy": ["Custom hello. Nice."]}
        r.w.reload(cfg)
        rec = r.reply(ev("neutral", "happy"))
        assert (rec.source, rec.cause, rec.text) == ("offline", "chat_disabled", "Custom hello. Nice.")
        assert_spoken(rec, r.sink)
        assert len(srv.requests) == 1


def test_real_fusion_transition_event_is_accepted(run_factory):
    from redsg_edge import events
    e = events.Transition(time.monotonic(), "neutral", "surprise", 0.9, 3.0, {})
    r = run_factory(make_cfg("https://api.example.invalid/v1"))
    rec = r.reply(e)
    assert rec.transition.to_emotion == "surprise" and rec.text in DEFAULT_TEMPLATES["surprise"]


def test_stop_is_prompt_even_mid_stream(run_factory):
    with ChatServer(reply=REPLY, mode="stall", fail_after=1, stall_s=30) as srv:
        r = run_factory(make_cfg(srv.base_url, first_token_timeout_s=20, total_timeout_s=30))
        assert r.w.submit(ev())
        time.sleep(0.3)
        t0 = time.monotonic()
        assert r.w.stop(5.0)
        assert time.monotonic() - t0 < 2.0
        assert not r.w.alive
        assert not r.w.submit(ev())


def test_template_cache_makes_offline_first_audio_immediate(voice, tmp_path):
    events = []
    cfg = make_cfg("https://api.example.invalid/v1", enabled=False)
    sink = WavSink(tmp_path / "wav")
    w = ReplyWorker(cfg, voice=voice, sink=sink, on_event=events.append, rng=random.Random(3))
    w.start(warm=True)
    try:
        t0 = time.monotonic()
        while w.prefill_pending and time.monotonic() - t0 < 60:
            time.sleep(0.05)
        assert w.prefill_pending == 0
        firsts = {split_sentences(t, final=True)[0][0] for v in DEFAULT_TEMPLATES.values() for t in v}
        assert {k[0] for k in w._pcm_cache} == firsts  # one style for all: shared sentences once
        assert w.submit(ev("neutral", "sad"))
        while not events and time.monotonic() - t0 < 80:
            time.sleep(0.02)
        rec = events[0]
        assert rec.latency_s["first_pcm"] < 0.1  # no synthesis before the first sample
        assert_spoken(rec, sink)
    finally:
        assert w.stop(5.0)


def test_say_speaks_the_text_into_the_sink_with_the_mic_gated(run_factory):
    r = run_factory(make_cfg("https://api.example.invalid/v1", enabled=False))
    t0 = time.monotonic()
    assert r.w.say("Hello from the **kitchen**. Dinner is ready.")
    deadline = time.monotonic() + 20
    while r.w.stats["said"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert r.w.stats["said"] == 1 and not r.events  # no transition, so no Reply event
    pcm, rate = sf.read(r.sink.paths[-1], dtype="int16")
    assert 1.0 < len(pcm) / rate < 6.0 and np.abs(pcm).max() > 3000
    assert r.w.mic_gated(t0 + 0.5)  # its own voice is not heard as the person's
    with pytest.raises(ValueError, match="nothing to say"):
        r.w.say("  ** ")


def test_mute_drops_transitions_until_it_ends(run_factory):
    r = run_factory(make_cfg("https://api.example.invalid/v1", enabled=False))
    r.w.mute(60)
    assert r.w.muted and not r.w.submit(ev("neutral", "sad"))
    assert r.w.stats["dropped_muted"] == 1
    r.w.mute(0)
    assert not r.w.muted
    rec = r.reply(ev("neutral", "sad"))
    assert rec.source == "offline"
    for bad in (-1, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            r.w.mute(bad)

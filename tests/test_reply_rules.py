"""The reply path's pure rules, case by case: sentence splitting, speech cleaning, templates,
the prompt, the API key and the local-endpoint test. Written against the mutants that
scripts/mutation.sh found alive in the reply package (docs/testing.md); tests/test_reply.py has
the tables and the worker."""

from __future__ import annotations

import pytest

from redsg_edge.config import Config
from redsg_edge.events import Transition
from redsg_edge.reply import (DEFAULT_TEMPLATES, Exchange, TemplatePicker, build_messages,
                              clean_for_speech, is_local_url, read_api_key, split_sentences)


@pytest.mark.parametrize("text, final, sentences, rest", [
    # opening quotes/brackets are not part of the word: "Dr. never ends a sentence
    ('I saw "Dr. Who" today.', True, ['I saw "Dr. Who" today.'], ""),
    ("Malcolm X. Smith spoke.", True, ["Malcolm X. Smith spoke."], ""),  # an initial
    ("Why? because I said so.", True, ["Why?", "because I said so."], ""),  # ? always ends
    (".", False, [], "."),  # nothing before the period: wait for more
    ("I got an A.", False, [], "I got an A."),  # maybe an initial: wait
    ("That is ok.", False, ["That is ok."], ""),  # a plain two-letter word ends it now
    ("It costs 15k.", False, ["It costs 15k."], ""),
    ("Made in the U.S.", False, [], "Made in the U.S."),  # a dotted word: wait
    ('He said "go."', False, [], 'He said "go."'),  # closing quote: the next token decides
    ("Room No. 5 is free. Yes.", True, ["Room No. 5 is free.", "Yes."], ""),
    ("I said no. Then I left.", True, ["I said no.", "Then I left."], ""),
    ("We had 2. 3 came later.", True, ["We had 2.", "3 came later."], ""),
    ("One.\nTwo.\nThree", False, ["One.", "Two."], "Three"),
])
def test_sentence_boundaries(text, final, sentences, rest):
    assert split_sentences(text, final=final) == (sentences, rest)


def test_long_remainders_are_cut_at_the_documented_limits():
    # soft_limit 120: a clause cut only past 120 characters, at a comma >= 20 characters in
    exactly = "a" * 30 + ", " + "b" * 88  # 120 characters
    assert split_sentences(exactly) == ([], exactly)
    longer = exactly + "b"
    assert split_sentences(longer) == (["a" * 30 + ","], " " + "b" * 89)
    at20 = "a" * 20 + ", " + "b" * 100  # the comma at index 20 = min_clause
    assert split_sentences(at20)[0] == ["a" * 20 + ","]
    # hard_limit 200: no clause at all, cut at the last space before 200 (after min_clause) ...
    assert split_sentences("x" * 200) == ([], "x" * 200)
    assert split_sentences("x" * 201) == (["x" * 200], "x")
    assert split_sentences("x" * 250) == (["x" * 200], "x" * 50)
    early = "ab cd " + "x" * 250  # spaces only before min_clause: cut at the hard limit
    assert split_sentences(early) == (["ab cd " + "x" * 194], "x" * 56)
    spaced = "ab cd " + "x" * 30 + " " + "y" * 40 + " " + "z" * 150
    got, rest = split_sentences(spaced)
    assert got == ["ab cd " + "x" * 30 + " " + "y" * 40] and rest == " " + "z" * 150


def test_clean_for_speech_drops_symbols_private_use_and_joiners_only():
    assert clean_for_speech("Xylophone  and\tXenon") == "Xylophone and Xenon"
    assert clean_for_speech("ok\ufe0f\u200d \ue000fine\ud800") == "ok fine"


def test_template_table_ignores_blank_entries_and_unknown_emotions_get_neutral():
    assert TemplatePicker({"sad": ["   ", ""]}).candidates("sad") == DEFAULT_TEMPLATES["sad"]
    assert TemplatePicker().candidates("bored") == DEFAULT_TEMPLATES["neutral"]


def test_prompt_exact_text():
    e = Transition(100.0, "neutral", "sad", 0.72, 34.0)
    hist = [Exchange(Transition(100.0, "happy", "neutral", 0.6, 10.0), "All calm.", True),
            Exchange(Transition(101.0, "neutral", "angry", 0.5, 30.0), None, False)]
    assert build_messages("SYS", e, hist) == [
        {"role": "system", "content": "SYS"},
        {"role": "user", "content":
            "Recent emotion changes (oldest first):\n"
            "- 0 s ago: happy -> neutral (confidence 0.60; happy had lasted 10 s). "
            'You said: "All calm."\n'
            "- 0 s ago: neutral -> angry (confidence 0.50; neutral had lasted 30 s). "
            "You did not reply.\n"
            "Now: neutral -> sad (confidence 0.72; neutral had lasted 34 s). "
            "Reply to this change."}]


def test_read_api_key_environment(monkeypatch):
    chat = Config().reply.chat
    assert read_api_key(chat, {}) is None
    assert read_api_key(chat, {chat.api_key_env: "  "}) is None
    monkeypatch.setenv(chat.api_key_env, " sk-env ")
    assert read_api_key(chat) == "sk-env"  # os.environ when none is given


@pytest.mark.parametrize("url, local", [
    ("http://localhost./v1", True), ("http://LOCALHOST:8080/v1", True),
    ("http://api.localhost/v1", True), ("http://box.local./v1", True),
    ("https://localhost.example.com/v1", False), ("not a url", False),
])
def test_is_local_url_edges(url, local):
    assert is_local_url(url) is local

"""Text for the voice: an incremental sentence splitter for a token stream, and speech cleaning.

Pure: no clock, no I/O. ``split_sentences`` turns the text a chat stream has delivered so far
into complete sentences (each handed to Piper as soon as it is complete) and a remainder;
``clean_for_speech`` drops what a voice should not read out. Both run in time linear in their
input, so a hostile endpoint cannot stall the reply worker with one huge token.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["split_sentences", "clean_for_speech"]


# Abbreviations after which a period never ends a sentence (titles, "e.g.") ...
_NEVER_END = frozenset("mr mrs ms mx dr prof rev sr jr st mt gen capt lt col sgt fr "
                       "e.g i.e cf vs viz approx ca fig".split())
# ... and those after which it may ("... and so on, etc. Then"): decided by the next character.
_MAYBE_END = frozenset("etc inc ltd co corp no".split())
# The lookbehind starts a match only at the first terminator of a run, so a long run of dots not
# followed by white space ("....x") is tried once, not once per dot (which is quadratic).
_TERM = re.compile(r"(?<![.!?\u2026])([.!?\u2026]+)([\"'\u201d\u2019)\]]*)(\s+|$)")
_CLAUSE = re.compile(r"[,;:](?=\s)|\s[-\u2013\u2014](?=\s)")


#: Characters before a terminator looked at for the word it follows: bounded, so that a text
#: with many terminators is split in linear time (a longer word is judged by its tail).
_WORD_LOOKBACK = 48


def _word_before(text: str, i: int) -> str:
    head = text[max(0, i - _WORD_LOOKBACK):i].rstrip()
    word = head.rsplit(None, 1)[-1] if head else ""
    return word.lstrip("\"'(\u201c\u2018[").lower()


def _is_boundary(text: str, m: re.Match, final: bool) -> bool | None:
    """True/False for a terminator match; None when only the next characters can tell."""
    term = m.group(1)
    if "!" in term or "?" in term:
        return True
    nxt_i = m.end()
    word = _word_before(text, m.start())
    if nxt_i >= len(text):  # nothing after the terminator yet
        if final:
            return True
        # Decide now when the period can only end a sentence (a plain word, not a number that
        # may go on "3.|5", not an abbreviation): saves waiting one token for the next capital.
        if (term == "." and len(word) > 1 and word[-1].isalpha() and "." not in word
                and word not in _NEVER_END and word not in _MAYBE_END and not m.group(2)):
            return True
        return None
    nxt = text[nxt_i]
    if nxt.islower():  # sentences start upper-case: "e.g. this", "well... maybe", "etc. and"
        return False
    if term == ".":
        if word in _NEVER_END:
            return False
        if len(word) == 1 and word.isalpha():  # an initial: "J. Smith"
            return False
        if word == "no" and nxt.isdigit():  # "No. 5"
            return False
    return True


def _split_line(text: str, final: bool) -> tuple[list[str], str]:
    out: list[str] = []
    start = 0
    for m in _TERM.finditer(text):
        b = _is_boundary(text, m, final)
        if b is None:
            break
        if b:
            out.append(text[start:m.start(3)])
            start = m.end()
    return out, text[start:]


def split_sentences(buffer: str, *, final: bool = False, soft_limit: int = 120,
                    hard_limit: int = 200, min_clause: int = 20) -> tuple[list[str], str]:
    """Split the text received so far into complete sentences and an unfinished remainder.

    Pure and incremental: call it with ``remainder + new_tokens`` each time. A sentence ends at
    ``. ! ? …`` (runs like ``?!`` or ``...`` included, closing quotes/brackets kept) followed by
    white space and, for a period or ellipsis, not by a lower-case letter, and never after
    ``Dr.``/``e.g.``/an initial; a period inside a number (``3.5``) does not end one. A newline
    ends a sentence. Because "is the next character lower-case?" is undecidable at the end of
    the buffer, a terminator there is kept in the remainder until more text arrives (or
    ``final``). A remainder longer than ``soft_limit`` characters is cut after its last comma,
    semicolon, colon or dash that leaves at least ``min_clause`` characters, and one longer than
    ``hard_limit`` at its last space, so speech can start before a long clause ends. No sentence
    is longer than ``hard_limit`` (a longer one is cut the same way), and the time is linear in
    ``len(buffer)``: a 1 MiB token from a hostile endpoint is split in well under a second.

    ``final=True`` (end of stream) returns everything, the remainder as a last sentence.
    Returns ``(sentences, remainder)``: sentences stripped, those without a letter or digit
    dropped; remainder unstripped (to be prefixed to the next tokens).
    """
    sentences: list[str] = []
    *lines, tail = buffer.split("\n")
    for line in lines:
        got, rest = _split_line(line, True)
        sentences += got + [rest]
    got, tail = _split_line(tail, final)
    sentences += got
    if final:
        sentences.append(tail)
        tail = ""
    capped: list[str] = []
    for s in sentences:  # a sentence longer than hard_limit is cut like a long remainder
        if len(s) > hard_limit:
            pieces, rest = _cut_long(s, hard_limit, hard_limit, min_clause)
            capped += pieces + [rest]
        else:
            capped.append(s)
    pieces, tail = _cut_long(tail, soft_limit, hard_limit, min_clause)
    capped += pieces
    return [s.strip() for s in capped if any(c.isalnum() for c in s)], tail


def _cut_long(text: str, soft_limit: int, hard_limit: int, min_clause: int) -> tuple[list[str], str]:
    """Cut ``text`` while more than ``soft_limit`` characters remain: after the last clause mark
    within the next ``hard_limit`` characters that leaves at least ``min_clause``, else (when more
    than ``hard_limit`` remain) at the last space before ``hard_limit``, else at ``hard_limit``.
    Each cut looks at ``hard_limit`` characters only, so the time is linear in ``len(text)``."""
    out: list[str] = []
    pos, n = 0, len(text)
    while n - pos > soft_limit:
        end = min(n, pos + hard_limit)
        cut = None
        # +1: the clause pattern looks one character ahead (the white space after the mark)
        for m in _CLAUSE.finditer(text, pos + min_clause, min(n, end + 1)):
            if m.end() <= end:
                cut = m.end()
        if cut is None and n - pos > hard_limit:
            cut = text.rfind(" ", pos + min_clause, end)
            cut = cut if cut > pos else end
        if cut is None:
            break
        out.append(text[pos:cut])
        pos = cut
    return out, text[pos:]


_MD_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_MD_CHARS = re.compile(r"[*_`#~|<>]+")


def clean_for_speech(text: str) -> str:
    """``text`` without what a TTS voice should not read out: markdown marks (``* _ ` # ~ | < >``),
    link targets (``[label](url)`` becomes ``label``), emoji and other symbols (Unicode ``So``),
    surrogates, private-use characters, variation selector 16 and the zero-width joiner; runs of
    white space become one space, the ends are stripped. Never raises for a ``str``."""
    text = _MD_LINK.sub(r"\1", text)
    text = _MD_CHARS.sub("", text)
    text = "".join(c for c in text if unicodedata.category(c) not in ("So", "Cs", "Co")
                   and c not in "\ufe0f\u200d")
    return re.sub(r"\s+", " ", text).strip()

"""Incremental detokenization and stop strings for one request.

Byte-level BPE splits multi-byte characters across tokens; decoding a prefix then shows
U+FFFD. We use TGI's prefix/read offsets (decode a short window, compare with the window
one token shorter) and hold text back while it ends in U+FFFD, so a client never sees a
broken character. Stop strings are matched on text: text that might be the start of a
stop string is held back too, and the text is cut before the first stop string found.
"""

from __future__ import annotations

from typing import Any

_BROKEN = "\ufffd"


class IncrementalDecoder:
    def __init__(self, tokenizer: Any, prompt_ids: list[int], stop: tuple[str, ...]) -> None:
        self._tok = tokenizer
        # A few prompt tokens give the first generated token its leading-space context.
        self._ids: list[int] = list(prompt_ids[-4:])
        self._prefix = 0
        self._read = len(self._ids)
        self._stop = tuple(s for s in stop if s)
        self._pending = ""  # decoded text not yet released (may hold a stop-string prefix)
        self.stopped = False

    def _decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def push(self, token_id: int) -> str:
        """Add one token; return the text that may be released now ("" when held back)."""
        if self.stopped:
            return ""
        self._ids.append(token_id)
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        if after.endswith(_BROKEN) or len(after) <= len(before):
            return ""  # an incomplete UTF-8 sequence (or a token with no text yet)
        self._pending += after[len(before) :]
        self._prefix, self._read = self._read, len(self._ids)
        return self._release()

    def _release(self) -> str:
        for stop in self._stop:
            at = self._pending.find(stop)
            if at >= 0:
                self.stopped = True
                out, self._pending = self._pending[:at], ""
                return out
        hold = self._held_suffix()
        cut = len(self._pending) - hold
        out, self._pending = self._pending[:cut], self._pending[cut:]
        return out

    def _held_suffix(self) -> int:
        """Length of the longest suffix of pending text that starts some stop string."""
        best = 0
        for stop in self._stop:
            for n in range(min(len(stop) - 1, len(self._pending)), best, -1):
                if self._pending.endswith(stop[:n]):
                    best = n
                    break
        return best

    def flush(self) -> str:
        """At finish: release held text; an incomplete trailing character is dropped."""
        if self.stopped:
            return ""
        tail = self._decode(self._ids[self._prefix :])
        before = self._decode(self._ids[self._prefix : self._read])
        rest = tail[len(before) :] if len(tail) > len(before) else ""
        out = (self._pending + rest).rstrip(_BROKEN)
        self._pending = ""
        for stop in self._stop:  # a stop string completed only by the flushed bytes
            at = out.find(stop)
            if at >= 0:
                out = out[:at]
        return out

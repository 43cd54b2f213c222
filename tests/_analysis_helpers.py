"""Helpers shared by the analysis tests: an HTML checker and the analyze CLI in a subprocess."""

import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class _Checker(HTMLParser):
    """Balanced tags, and the text of every token span (line breaks as newlines)."""

    VOID = {"br", "meta", "img", "hr", "input", "link"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack = []
        self.errors = []
        self.tokens = []  # (attrs, text)
        self._tok_depth = None
        self._skip_depth = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in self.VOID:
            if tag == "br" and self._tok_depth is not None:
                self.tokens[-1][1].append("\n")
            return
        self.stack.append(tag)
        classes = (attrs.get("class") or "").split()
        if tag == "span" and "tok" in classes:
            self._tok_depth = len(self.stack)
            self.tokens.append((attrs, []))
        elif self._tok_depth is not None and ({"nl", "mark"} & set(classes)):
            self._skip_depth = len(self.stack)

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unbalanced </{tag}> with open {self.stack[-3:]}")
            return
        if self._skip_depth == len(self.stack):
            self._skip_depth = None
        if self._tok_depth == len(self.stack):
            self._tok_depth = None
        self.stack.pop()

    def handle_data(self, data):
        if self._tok_depth is not None and self._skip_depth is None:
            self.tokens[-1][1].append(data)


def parse_html(text):
    checker = _Checker()
    checker.feed(text)
    checker.close()
    assert not checker.errors and not checker.stack, (checker.errors, checker.stack)
    return [(attrs, "".join(parts)) for attrs, parts in checker.tokens]


def run_analyze(args, cwd, **env):
    """``python -m softsae_lens.analyze ARGS`` in a fresh process, offline."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run(
        [sys.executable, "-m", "softsae_lens.analyze", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )

"""A training process's output, read as it streams (SSH) or from its log (Slurm): the lines the
runner acts on (RESULT_DIR, BASE_KEY, BASE_MODEL), the base models it trained (BASE_TRAINED),
argparse's usage line, a result folder it refused to replace (RESULT_EXISTS), a validation loss
that was not finite (NOT_FINITE), and a pack's
MEMBER_DONE and PACK_OUT_OF_MEMORY lines (engine.pack prints them)."""
from collections import deque

from engine.markers import (BASE_KEY, BASE_MODEL, BASE_TRAINED, MEMBER_DONE, NOT_FINITE, OUT_OF_MEMORY, RESULT_DIR,
                            RESULT_EXISTS)


class OutputLines:
    """A job's output, read as it streams: its last lines, the base models it trained
    (BASE_TRAINED <key>) and the lines the runner acts on (RESULT_DIR, BASE_KEY, BASE_MODEL).
    In a pack's output, MEMBER_DONE <i> ends member i's lines: on_member_done(i, its lines)."""

    TAGS = tuple(f"{tag} " for tag in (RESULT_DIR, BASE_KEY, BASE_MODEL))

    def __init__(self, on_member_done=None):
        self.on_member_done = on_member_done
        self.pending, self.tagged, self.trained, self.last = b"", [], set(), deque(maxlen=20)
        self.usage = False  # argparse printed its usage line (before an error and exit status 2)
        self.out_of_memory = False  # a pack said its device ran out of memory
        self.exists = None  # the result folder it refused to replace (RESULT_EXISTS), if any
        self.diverged = None  # the fold and phase whose validation loss was not finite (NOT_FINITE), if any

    def feed(self, chunk):
        self.pending += chunk
        *complete, self.pending = self.pending.split(b"\n")
        for raw in complete:
            self._line(raw.decode(errors="replace").rstrip("\r"))

    def close(self):
        """The output ended: its last line may lack a newline."""
        if self.pending:
            self._line(self.pending.decode(errors="replace"))
            self.pending = b""

    def _line(self, line):
        self.last.append(line)
        self.usage = self.usage or line.startswith("usage: ")
        self.out_of_memory = self.out_of_memory or line.startswith(f"{OUT_OF_MEMORY} ")
        if line.startswith(f"{RESULT_EXISTS} "):
            self.exists = line.split(" ", 1)[1].strip()
        if line.startswith(f"{NOT_FINITE} "):
            self.diverged = line.split(" ", 1)[1].strip()
        if line.startswith(f"{BASE_TRAINED} "):
            self.trained.add(line.split(" ", 1)[1].strip())
        elif line.startswith(self.TAGS):
            self.tagged.append(line)
        elif line.startswith(f"{MEMBER_DONE} ") and self.on_member_done:
            index, text, self.tagged = line.split(" ", 1)[1].strip(), self.text(), []
            if index.isdigit():
                self.on_member_done(int(index), text)

    def fails_alike(self, exit_status):
        """Why this process would fail the same way on any slot and attempt, so it is not retried:
        argparse refused its flags, its result folder exists and this run did not write it, or its
        training diverged (the same settings diverge again)."""
        if self.exists:
            return f"{self.exists} exists and this run did not write it (--overwrite replaces it): not retried"
        if self.diverged and exit_status == 2:
            return f"{self.diverged}: validation loss not finite (a lower --lr may help): not retried"
        if exit_status == 2 and self.usage:
            return "bad flags: not retried"
        return None

    def text(self):
        return "\n".join(self.tagged)

    def tail(self):
        return "\n".join(self.last)


def printed(output, tag):
    """The value a training CLI printed last as `TAG value` (RESULT_DIR, BASE_KEY, BASE_MODEL)."""
    for line in reversed(output.splitlines()):
        if line.startswith(f"{tag} "):
            return line[len(tag) + 1:].strip()
    return None

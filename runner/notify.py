"""Where a run's messages go: the cluster config's "notify" section, a webhook URL that gets each
message as a JSON POST ({"text": message}, the shape chat services accept) and/or a local command
that reads it on stdin. What the messages say, and when, is runner/news.py.

    "notify": {"url": "https://chat.example/hooks/T0/XXXX", "command": "mail -s grid me@lab",
               "field": "text", "timeout_s": 10}

Each channel sends from a thread of its own, in order, with a timeout, so a webhook that fails or
hangs never stops or slows the run; its first failure is one warning, later ones are silent.
The URL is a secret (whoever has it may post to the channel): no line, log or file of the run
shows it, and it never reaches a process's argv (the POST is made here, with urllib).
"""
import json
import queue
import subprocess
import threading
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from engine.fileio import ConfigError, read_json

FIELDS = ("url", "command", "field", "timeout_s")
TIMEOUT_S = 10.0  # per message and channel; also how long the end of a run waits for the last messages


def _number(v, low, high):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and low <= v <= high


def web_url(value):
    """Whether value is an http(s) URL with a host (and no spaces)."""
    if not isinstance(value, str) or any(c.isspace() for c in value):
        return False
    try:
        parts = urlsplit(value)
        return parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        return False


def check_notify(section, where):
    """The validated settings of a "notify" section, every default filled in; ConfigError in one
    line otherwise, which never shows the URL."""
    if not isinstance(section, dict):
        raise ConfigError(f"{where}: expected an object with \"url\" and/or \"command\"")
    for key in section:
        if key not in FIELDS and not key.startswith("_"):
            raise ConfigError(f"{where}: unknown field \"{key}\" (known: {', '.join(FIELDS)})")
    settings = {"url": section.get("url"), "command": section.get("command"),
                "field": section.get("field", "text"), "timeout_s": section.get("timeout_s", TIMEOUT_S)}
    if settings["url"] is None and settings["command"] is None:
        raise ConfigError(f"{where}: give \"url\" (a webhook), \"command\" (gets each message on stdin), or both")
    if settings["url"] is not None and not web_url(settings["url"]):
        raise ConfigError(f"{where}.url: expected an http:// or https:// URL (its value is not shown: it is a secret)")
    if settings["command"] is not None and not (isinstance(settings["command"], str) and settings["command"].strip()):
        raise ConfigError(f"{where}.command: expected a shell command (a non-empty string)")
    if not (isinstance(settings["field"], str) and settings["field"]):
        raise ConfigError(f"{where}.field: expected the name of the JSON field that holds the text, such as \"text\"")
    if not _number(settings["timeout_s"], 0.1, 300):
        raise ConfigError(f"{where}.timeout_s: expected seconds between 0.1 and 300")
    return settings


def load_notify(path):
    """The cluster config's "notify" settings (check_notify), or None when it has no such section."""
    data = read_json(path, "cluster config")
    if not isinstance(data, dict) or "notify" not in data:
        return None
    return check_notify(data["notify"], f"{path}: notify")


class Channel:
    """One destination with its own thread and queue: deliver(text) is called for each message in
    order; the first failure is one warning (warn), the run never waits for it."""

    def __init__(self, name, deliver, warn):
        self.name, self.deliver, self.warn = name, deliver, warn
        self.queue = queue.Queue()
        self.warned = False
        self.deadline = None  # set by close(): messages still queued after it are dropped
        self.thread = threading.Thread(target=self._serve, daemon=True, name=f"notify {name}")
        self.thread.start()

    def _serve(self):
        for text in iter(self.queue.get, None):
            if self.deadline is not None and time.time() > self.deadline:
                continue  # the run has ended and waited long enough
            try:
                self.deliver(text)
            except Exception as e:  # whatever it is, the run goes on
                if not self.warned:
                    self.warned = True
                    self.warn(f"warning: notify: the {self.name} failed ({e}); the run goes on, and later "
                              f"failures are not shown")


class Notifier:
    """The run's messages to every channel of a "notify" section. send() never blocks; close() waits
    at most timeout_s for the messages still queued, then leaves them."""

    def __init__(self, settings, warn):
        self.settings = settings
        self.channels = []
        if settings["url"]:
            self.channels.append(Channel("webhook", self._post, warn))
        if settings["command"]:
            self.channels.append(Channel("notify command", self._run, warn))

    def send(self, text):
        for channel in self.channels:
            channel.queue.put(text)

    def close(self):
        deadline = time.time() + self.settings["timeout_s"]
        for channel in self.channels:
            channel.deadline = deadline
            channel.queue.put(None)
        for channel in self.channels:
            channel.thread.join(max(0.0, deadline - time.time()))

    def _post(self, text):
        url, timeout = self.settings["url"], self.settings["timeout_s"]
        request = urllib.request.Request(url, data=json.dumps({self.settings["field"]: text}).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                response.read()
        except urllib.error.HTTPError as e:
            raise OSError(f"HTTP {e.code} {e.reason}") from None
        except Exception as e:  # the reason alone, the URL taken out: an error's text may hold it
            reason = getattr(e, "reason", e)
            if isinstance(reason, TimeoutError):
                raise OSError(f"no answer within {timeout:g} s") from None
            raise OSError(str(reason).replace(url, "***") or type(reason).__name__) from None

    def _run(self, text):
        timeout = self.settings["timeout_s"]
        try:
            done = subprocess.run(self.settings["command"], shell=True, input=text + "\n", text=True,
                                  capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise OSError(f"still running after {timeout:g} s (killed)") from None
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise OSError(f"exit status {done.returncode}: {last[:200]}")

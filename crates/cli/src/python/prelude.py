"""Python side of Machinist's scripting layer (module `machinist`).

The Rust binding (module `_machinist`) provides the machine objects and the driver calls; this
module adds what is most naturally written in Python: attribute access to node configuration,
the `subtest` context manager, the `polling_condition` decorator, running a script file with
proper tracebacks, and the interactive console.
"""

import code
import contextlib
import functools
import os
import sys
import unittest

import _machinist


class MachinistError(Exception):
    """Base class of every error the driver raises."""


class MachineError(MachinistError):
    """A machine could not do what was asked (QEMU exited, boot timeout, backend error)."""


class RequestedAssertionFailed(MachinistError, AssertionError):
    """A check failed: a command failed or unexpectedly succeeded, a wait timed out."""


class PollingConditionError(MachinistError):
    """A polling condition failed while a `with cond:` block ran."""


class NotSupportedError(MachineError):
    """The operation cannot work on this machine (e.g. `wait_for_x` on a guest without an X
    server); the message says why and what to do instead. Nothing was attempted."""


class AttrDict(dict):
    """A dict whose keys are also attributes: `nodes.server.config.tutorial.port`."""

    __slots__ = ()

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            known = ", ".join(sorted(self)) or "none"
            raise AttributeError(f"no attribute {key!r} (known: {known})") from None

    def __dir__(self):
        return sorted(set(dir(dict)) | {k for k in self if k.isidentifier()})


def attrs(value):
    """Recursively turns dicts into AttrDicts."""
    if isinstance(value, dict):
        return AttrDict((k, attrs(v)) for k, v in value.items())
    if isinstance(value, list):
        return [attrs(v) for v in value]
    return value


class Node:
    """A declared node: `name` and `config` (its configuration; typed options at top level)."""

    def __init__(self, name, config):
        self.name = name
        self.config = attrs(config)

    def __repr__(self):
        return f"<Node {self.name}>"


@contextlib.contextmanager
def subtest(name):
    """`with subtest("name"):` — a nested log block and a JUnit test case; failures re-raise."""
    token = _machinist.subtest_begin(str(name))
    try:
        yield
    except BaseException as e:
        _machinist.subtest_end(token, f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)
        raise
    else:
        _machinist.subtest_end(token, None)


class _Assertions(unittest.TestCase):
    """`t` in scripts (NixOS): unittest's assertions, failing with RequestedAssertionFailed."""

    failureException = RequestedAssertionFailed
    maxDiff = None

    def runTest(self):
        pass


t = _Assertions()


def retry(fn, timeout_seconds=900):
    """Calls `fn(last_try)` about once a second until it returns true (NixOS `retry`)."""
    _machinist.retry(fn, timeout_seconds)


class PollingCondition:
    """Returned by `polling_condition`: use as `with cond:` or call `cond.wait(timeout)`."""

    def __init__(self, fun, seconds_interval, description):
        self.fun = fun
        self.description = description or (fun.__doc__ or "").strip() or fun.__name__
        self._cond = _machinist.polling_condition(self.description, seconds_interval, fun)
        functools.update_wrapper(self, fun)

    def __enter__(self):
        self._token = _machinist.polling_enter(self._cond)
        return self

    def __exit__(self, exc_type, exc, tb):
        # A latched condition failure takes precedence over the body's (derived) error.
        _machinist.polling_exit(self._token, exc is not None)
        return False

    def check(self, force=False):
        return _machinist.polling_check(self._cond, bool(force))

    def wait(self, timeout=900):
        _machinist.polling_wait(self._cond, timeout)

    def __call__(self, *args, **kwargs):
        return self.fun(*args, **kwargs)


def polling_condition(fun=None, *, seconds_interval=2.0, description=None):
    """Decorator (with or without arguments) declaring an invariant (NixOS `polling_condition`)."""
    if fun is None:
        return lambda f: PollingCondition(f, seconds_interval, description)
    return PollingCondition(fun, seconds_interval, description)


def run_script(source, filename, namespace):
    """Runs a test script with `filename` in tracebacks."""
    import linecache

    # Tracebacks show the script's lines.
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    compiled = compile(source, filename, "exec")
    exec(compiled, namespace)


def format_exception(exc):
    """The traceback of `exc` limited to the script's own frames, then the error."""
    import traceback

    frames = [
        f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<machinist")
    ]
    out = ""
    if frames:
        out = "Traceback (most recent call last):\n" + "".join(traceback.format_list(frames))
    return (out + "".join(traceback.format_exception_only(type(exc), exc))).strip()


def pythonize_name(name):
    """A machine name as a Python identifier (as the NixOS driver does)."""
    import re

    return re.sub(r"^[^A-Za-z_]|[^A-Za-z0-9_]", "_", name)


def _open_history(path):
    # Create the history file private to the user before readline writes to it.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)


class Console(code.InteractiveConsole):
    """The REPL: errors print one readable block, and the session goes on."""

    def showtraceback(self):
        etype, value, tb = sys.exc_info()
        if isinstance(value, MachinistError):
            # The driver's message says what failed and what to do; a Python traceback into
            # the binding would only add noise.
            self.write(f"{etype.__name__}: {value}\n")
        else:
            super().showtraceback()


def interact(namespace, history_path, banner):
    """Opens the Python REPL on `namespace` with readline history and tab completion."""
    try:
        import readline
        import rlcompleter

        readline.set_completer(rlcompleter.Completer(namespace).complete)
        readline.parse_and_bind("tab: complete")
        readline.set_history_length(10000)
        if history_path:
            _open_history(history_path)
            try:
                readline.read_history_file(history_path)
            except OSError:
                pass
    except ImportError:
        readline = None
    console = Console(namespace, filename="<machinist>")
    try:
        console.interact(banner=banner, exitmsg="")
    finally:
        if readline is not None and history_path:
            readline.write_history_file(history_path)
            os.chmod(history_path, 0o600)

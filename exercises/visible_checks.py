"""The checks that this notebook's check cells run: run this cell once, then carry on.

Each check cell makes ``check = Checks("<function>")``, then one line per check:

    out, weights = check.call(scaled_dot_product_attention, q, k, v)  # runs your function
    check("weights have shape (1, 1, 2)", lambda: weights.shape == (1, 1, 2))
    check.values("each row of weights sums to 1", lambda: weights.sum(-1), 1.0)
    check.done()

``check.call`` runs your function: if it raises, the cell stops there and says why (with
the likely mistake where the error makes it clear); it also notices inputs modified in
place. ``check`` and ``check.values`` print PASS or FAIL and what was checked; a failed
value check shows what your function gave and, when those are a known mistake's values,
names the mistake. ``check.done()`` raises an AssertionError that lists the failed checks
with a hint each, so that the Validate button reports them too. The hidden tests, run
when your notebook is graded, check much more (many shapes and seeds, gradients, dtypes,
devices).
"""

import inspect
import textwrap
import warnings

import torch

WIDTH = 80  # nbgrader's validate shows 86 characters of each line
INDENT = " " * 6
NOT_WRITTEN = "Not written yet: replace raise NotImplementedError() with your code."
MODIFIED = "An input was modified in place (x += ..., x[...] = ..., x.add_()): use new tensors."
DTYPE_HINT = "Keep the inputs' dtype: create no tensor with a fixed dtype (no .float())."
DEVICE_HINT = "A tensor is created on a fixed device: use device=<an input>.device."

# Filled in for each notebook: the sentences of the known mistakes its checks name, and
# the part of the notebook where each function is written.
MISTAKES: dict[str, str] = {}
PARTS: dict[str, str] = {}

_LAST_RUN: dict[str, tuple[object, bool]] = {}  # function -> (definition checked, passed)

# The first operation on the meta device loads a good part of torch (seconds): do it here,
# once, so that every check cell stays quick.
(torch.ones(1, 1, device="meta") @ torch.ones(1, 1, device="meta") / 2.0).sum()


class ChecksFailed(AssertionError):
    """Some checks of a function failed: shown as the list of failures, not a traceback."""

    def _render_traceback_(self) -> list[str]:
        return f"{type(self).__name__}: {self}".splitlines()


def close(actual, expected, atol: float = 1e-5) -> bool:
    """Whether ``actual`` is a tensor with ``expected``'s shape and values within ``atol``.

    ``expected`` is a number (every entry), a nested list or a tensor; both are compared
    in float64 on the CPU; NaN is close only to NaN.
    """
    if not isinstance(actual, torch.Tensor) or actual.device.type == "meta":
        return False
    actual = actual.detach().to("cpu", torch.float64)
    expected = torch.as_tensor(expected, dtype=torch.float64)
    if expected.dim() == 0:
        expected = expected.expand(actual.shape)
    if actual.shape != expected.shape:
        return False
    return bool(torch.allclose(actual, expected, rtol=0.0, atol=atol, equal_nan=True))


def finite(tensor) -> bool:
    """Whether every entry of ``tensor`` is a finite number (no NaN, no infinity)."""
    return isinstance(tensor, torch.Tensor) and not tensor.is_meta and bool(tensor.isfinite().all())


def _wrapped(text: str) -> list[str]:
    """``text`` in indented lines; hyphenated words ("feed-forward") stay whole."""
    return textwrap.wrap(
        text, WIDTH, initial_indent=INDENT, subsequent_indent=INDENT, break_on_hyphens=False
    )


def _shorten(text: str, width: int = 2 * WIDTH - 2 * len(INDENT)) -> str:
    return textwrap.shorten(" ".join(str(text).split()), width, placeholder=" ...")


def _describe(value) -> str:
    """A tensor as its shape (with its dtype and device when they are not the usual)."""
    if not isinstance(value, torch.Tensor):
        return _shorten(repr(value), 30)
    text = str(tuple(value.shape))
    if value.dtype != torch.float32:
        text += " " + str(value.dtype).removeprefix("torch.")
    if value.device.type != "cpu":
        text += f" on {value.device.type}"
    return text


def _arguments(function, args, kwargs) -> str:
    try:
        bound = inspect.signature(function).bind(*args, **kwargs).arguments
    except (TypeError, ValueError):
        bound = {f"arg {i}": value for i, value in enumerate(args)} | kwargs
    return ", ".join(f"{name} {_describe(value)}" for name, value in bound.items())


def _tensors(values) -> list[torch.Tensor]:
    found = []
    for value in values:
        if isinstance(value, torch.Tensor):
            found.append(value)
        elif isinstance(value, (list, tuple)):
            found += _tensors(value)
        elif isinstance(value, dict):
            found += _tensors(value.values())
    return found


def _raised_in(error: BaseException) -> list[str]:
    """The names of the functions the error passed through, innermost last."""
    names, tb = [], error.__traceback__
    while tb is not None:
        names.append(tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    return names


class Checks:
    """The checks of one function, printed one line each; ``done()`` raises on a failure.

    ``needs`` names the functions this one builds on: when one of them has not passed its
    own checks, the cell says which part to fix (or run) first, and names no known mistake
    of this function (its outputs may be wrong only because of that part).
    """

    def __init__(self, function: str, needs: str | tuple[str, ...] = ()):
        self.function = function
        self.needs = (needs,) if isinstance(needs, str) else tuple(needs)
        self.count = 0
        self.failures: list[tuple[str, list[str]]] = []  # (what, hint lines)
        self.modified = False  # whether a call modified one of its inputs
        self.calls = 0  # calls with tensor inputs
        self.notes = [note for note in map(_note_on, self.needs) if note]
        for note in self.notes:
            print(f"NOTE  {note}")

    def __call__(self, what: str, test, hint: str | None = None, mistake: str | None = None):
        """Print PASS or FAIL for ``what``; ``test()`` says whether it holds.

        ``mistake`` names the known mistake that makes this check fail (its sentence is the
        hint); ``hint`` says what to look at.
        """
        self.count += 1
        error = None
        try:
            passed = bool(test())
        except Exception as raised:
            passed, error = False, raised
        print(f"{'PASS' if passed else 'FAIL'}  {what}")
        if not passed:
            lines = _hint_lines(None if self.notes else mistake, hint)
            if error is not None:
                lines += _wrapped(f"(The check raised {type(error).__name__}: {_shorten(error)})")
            self.failures.append((what, lines))
        return passed

    def values(self, what: str, actual, expected, hint=None, known=None, atol: float = 1e-5):
        """``check(what, ...)`` for ``close(actual, expected, atol)``; ``actual`` may be a
        function that returns it. ``known`` maps known mistakes to the values they give: a
        failure names the one that ``actual`` matches. Small results are shown."""
        got = None

        def test():
            nonlocal got
            got = actual() if callable(actual) else actual
            return close(got, expected, atol)

        passed = self(what, test, hint=hint)
        if passed or not isinstance(got, torch.Tensor):
            return passed
        lines = self.failures[-1][1]
        for mistake, value in (known or {}).items():
            if close(got, value, atol) and not self.notes:
                lines[:] = _hint_lines(mistake, None)
                break
        shape = torch.as_tensor(expected).shape
        if got.shape != shape and len(shape):
            lines += _wrapped(f"Got shape {tuple(got.shape)}, expected {tuple(shape)}.")
        elif got.numel() <= 8 and not got.is_meta:
            numbers = ", ".join(f"{x:.6g}" for x in got.detach().double().flatten().tolist())
            lines += _wrapped(f"Got {numbers}.")
        return passed

    def call(self, function, *args, mistake=None, hint=None, error_says="", **kwargs):
        """``function(*args, **kwargs)``, or a FAIL that ends the cell if it raises.

        ``mistake`` (a known mistake's name) or ``hint`` explains an error whose message
        contains ``error_says`` (by default, any error): give them where the cause of an
        error is clear.
        """
        name = getattr(function, "__name__", type(function).__name__)
        inputs = _tensors([*args, *kwargs.values()])
        before = [(t._version, None if t.is_meta else t.detach().clone()) for t in inputs]
        self.calls += bool(inputs)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                result = function(*args, **kwargs)
        except Exception as error:
            lines = [*_wrapped(f"Called with {_arguments(function, args, kwargs)}.")]
            lines += _wrapped(f"It raised {type(error).__name__}: {_shorten(error)}")
            lines += self._explain(name, error, mistake, hint, error_says)
            what = f"{name} runs without an error"
            if isinstance(error, NotImplementedError) and not self._needed_in(error, name):
                what, lines = f"{name} is written", _wrapped(NOT_WRITTEN)
            self.failures.append((what, lines))
            self.count += 1
            print(f"FAIL  {what}")
            self._finish(stopped=True)
        for warning in caught[:1]:
            print(f"NOTE  {name} warned: {_shorten(warning.message, WIDTH - 20)}")
        for tensor, (version, values) in zip(inputs, before, strict=True):
            changed = tensor._version != version
            if values is not None and not changed:
                changed = not torch.equal(tensor.detach(), values)
            self.modified = self.modified or changed
        return result

    def _needed_in(self, error: Exception, name: str) -> str | None:
        """The function this one builds on that raised ``error``, if any."""
        raised_in = _raised_in(error)
        return next((n for n in self.needs if n != name and n in raised_in), None)

    def _explain(self, name, error, mistake, hint, error_says) -> list[str]:
        """Why the call raised, where that is clear."""
        needed = self._needed_in(error, name)
        if needed:
            part = PARTS.get(needed, needed)
            return _wrapped(f"The error comes from {needed}: fix {part} first.")
        if error_says in str(error):
            return _hint_lines(mistake, hint)
        return []

    def done(self) -> None:
        """Print the verdict; raise ChecksFailed if any check failed."""
        if self.calls:
            self("the inputs are left unchanged", lambda: not self.modified, hint=MODIFIED)
        self._finish()
        print(f"All {self.count} checks of {self.function} pass.")

    def _finish(self, stopped: bool = False) -> None:
        _LAST_RUN[self.function] = (globals().get(self.function), not self.failures)
        if not self.failures:
            return
        failed = f"{len(self.failures)} of {self.count} checks" if self.count > 1 else "1 check"
        lines = [f"{failed} of {self.function} failed."]
        lines += [f"NOTE  {note}" for note in self.notes]  # the likely cause comes first
        for what, hint in self.failures:
            lines += [f"FAIL  {what}", *hint]
        if stopped:
            lines += _wrapped("(The checks after this error did not run.)")
        raise ChecksFailed("\n".join(lines)) from None


def _note_on(name: str) -> str | None:
    """A sentence when ``name``, as it is defined now, has not passed its checks."""
    part = PARTS.get(name, f"the part that defines {name}")
    checked, passed = _LAST_RUN.get(name, (None, False))
    if checked is None:
        return f"{name} has not been checked yet: run {part} first."
    if checked is not globals().get(name):
        return f"{name} changed since its checks ran: run its checks ({part}) again."
    if not passed:
        return f"{name} fails its own checks: fix {part} first."
    return None


def _hint_lines(mistake: str | None, hint: str | None) -> list[str]:
    lines = []
    if mistake is not None:
        lines += _wrapped(f"Likely mistake: {MISTAKES[mistake]}")
    if hint is not None:
        lines += _wrapped(hint)
    return lines

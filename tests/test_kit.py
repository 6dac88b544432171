"""The checks kit on its own: self-validating batteries, gates, the standard checks, the
known-mistake registry, and the hard cases proven before a chapter needs them (a callable
argument described as data, a class contract with injected weights)."""

from __future__ import annotations

import inspect
from functools import partial

import pytest
import torch
import torch.nn as nn

import solutions.ch01_seq2seq as seq2seq
import solutions.ch06_transformer as transformer
from autograder.batteries import load_battery
from autograder.kit import inputs
from autograder.kit.battery import (
    Battery,
    BatteryError,
    Check,
    Mutant,
    judge_plan,
    make_plan,
    run_reference,
    scores_by_function,
)
from autograder.kit.judges import match_reference
from autograder.kit.mistakes import KnownMistakes, standalone_source
from autograder.kit.standard import device_argument_checks, standard_checks
from autograder.runtime.codec import TensorPacker, decode_call, encode_call
from autograder.runtime.executor import (
    ACCELERATOR,
    CALL_DEVICE,
    Call,
    Callback,
    Module,
    OnDevice,
    execute_call,
)
from autograder.sandbox import Worker

JUDGE = match_reference(rtol=1e-5, atol=1e-6)


def _double_calls(generator, **options):
    return [Call("double", (inputs.randn(generator, 3, 4),), **options)]


def double(x):
    """The toy batteries' reference (their reference module is this one)."""
    return x * 2


_double = double


def _battery(checks, **options):
    return Battery("toy", "tests.test_kit", tuple(checks), {}, **options)


def _check(name, function="double", points=1.0, **options):
    return Check(name, function, points, _double_calls, "wrong.", JUDGE, **options)


# A battery checks itself -------------------------------------------------------------------


@pytest.mark.parametrize(
    "checks, options, problem",
    [
        ([_check("a"), _check("a")], {}, "used twice"),
        ([_check("a", gated=True)], {}, "only gated checks"),
        ([_check("a")], {"points": {"double": 10.0}}, "add up to 1, not 10"),
        ([_check("a")], {"points": {"double": 1.0, "triple": 1.0}}, "the contracts are"),
        ([_check("a")], {"mutants": (Mutant("triple", "m", "s", _double),)}, "no contract"),
    ],
)
def test_battery_refuses_to_be_built_inconsistent(checks, options, problem):
    with pytest.raises(BatteryError, match=problem):
        _battery(checks, **options)


def test_forbidden_lists_must_name_contracts():
    with pytest.raises(BatteryError, match="forbidden name no contract: triple"):
        Battery("toy", "tests.test_kit", (_check("a"),), {"triple": ("F.unfold",)})


# Gates: points only for working code -------------------------------------------------------


def _grade(battery, namespace, seed=5):
    plan = make_plan(battery, seed)
    expected = run_reference(battery, plan)
    actual = {
        name: [execute_call(namespace, call) for call in calls]
        for name, calls in plan.calls.items()
    }
    return scores_by_function(battery, judge_plan(battery, plan, actual, expected))


def test_a_gated_check_pays_only_once_the_values_are_right():
    battery = _battery(standard_checks("double", _double_calls, points={"float64": 1, "meta": 2}))
    battery = _battery([_check("double_values", points=3), *battery.checks])
    assert [check.gated for check in battery.checks] == [False, False, True]
    assert _grade(battery, {"double": _double}) == {"double": 6}
    zeros = {"double": lambda x: torch.zeros_like(x)}  # right shape, dtype, device
    assert _grade(battery, zeros) == {"double": 0}


# The standard checks -----------------------------------------------------------------------


def test_standard_checks_are_named_and_worded_from_the_function():
    points = {"gradients": 1.5, "float64": 0.5, "float16": 0.5, "meta": 1, "accelerator": 1}
    checks = standard_checks("double", _double_calls, points=points, hints={"meta": "Hint."})
    assert [check.name for check in checks] == [
        "double_gradients",
        "double_float64",
        "double_float16",
        "double_meta",
        "double_accelerator",
    ]
    assert [check.points for check in checks] == [1.5, 0.5, 0.5, 1, 1]
    assert all("double" in check.message for check in checks)
    assert checks[3].message.endswith("Hint.") and checks[3].gated
    calls = checks[2].calls(torch.Generator().manual_seed(0))
    assert calls[0].dtype == torch.float16
    with pytest.raises(ValueError, match="unknown kinds"):
        standard_checks("double", _double_calls, points={"float8": 1})


def test_device_argument_checks_are_worded_from_the_function_and_what_it_creates():
    def draw(generator, device):
        return [Call("causal_mask", (3,), {"device": CALL_DEVICE}, device=device)]

    meta, accelerator = device_argument_checks(
        "causal_mask",
        draw,
        prefix="causal",
        points={"meta": 2.0, "accelerator": 1.0},
        creates="the mask",
        judge=JUDGE,
    )
    assert (meta.name, meta.points, meta.gated) == ("causal_meta", 2.0, True)
    assert (accelerator.name, accelerator.points, accelerator.gated) == (
        "causal_accelerator",
        1.0,
        False,
    )
    assert meta.message.startswith("causal_mask ignores its device argument: create the mask")
    assert "accelerator" in accelerator.message and "create the mask" in accelerator.message
    generator = torch.Generator().manual_seed(0)
    assert [c.device for c in (*meta.calls(generator), *accelerator.calls(generator))] == [
        "meta",
        ACCELERATOR,
    ]


# Inputs --------------------------------------------------------------------------------------


@pytest.mark.parametrize("offset", [1000.0, -1000.0])
def test_large_attention_scores_sit_at_the_offset_with_a_spread_of_order_one(gen, offset):
    q, k, v = inputs.large_attention(gen, offset)
    (B, Tq, d), Tk, dv = q.shape, k.shape[1], v.shape[2]
    assert k.shape == (B, Tk, d) and v.shape == (B, Tk, dv)
    assert len({B, Tq, Tk, d, dv}) == 5 and min(B, Tq, Tk, d, dv) >= 3
    scores = q @ k.mT / d**0.5  # (B, Tq, Tk)
    assert torch.allclose(scores.mean(), torch.tensor(offset), atol=5.0)
    assert 0.1 < scores.std(dim=-1).mean() < 10.0


# The known-mistake registry ----------------------------------------------------------------


def test_known_mistakes_register_in_order_under_their_own_names():
    mistake = KnownMistakes()

    @mistake("double", "it triples instead.")
    def double_triples(x):
        return x * 3

    @mistake("double", "it adds instead.")
    def double_adds(x):
        return x + 2

    assert [(m.function, m.name) for m in mistake.mutants] == [
        ("double", "double_triples"),
        ("double", "double_adds"),
    ]
    assert mistake.sentence("double_adds") == "it adds instead."
    with pytest.raises(ValueError, match="two known mistakes"):
        mistake("double", "again.")(double_adds)


def test_a_mistake_pasted_alone_loses_its_decorator_and_keeps_its_helpers():
    """A sentence that says "class" or "def" is no start of the source, and the helpers that
    a class's methods call travel with it."""
    layer = next(m for m in load_battery("ch06_transformer").mutants if m.name == "EncoderGelu")
    source = standalone_source(layer)
    assert source.index("def _encode(") < source.index("class EncoderLayer(EncoderLayer):")
    assert "@mistake" not in source
    embedding = next(
        m for m in load_battery("ch07_vit").mutants if m.name == "EmbeddingClassTokenLast"
    )
    source = standalone_source(embedding)
    assert "class token" in embedding.mistake and "@mistake" not in source
    assert source.lstrip().startswith(("def ", "class "))
    assert "class PatchEmbedding(PatchEmbedding):" in source


# A callable argument, described as data ----------------------------------------------------


def _decode_calls(generator, kind="rnn", **options):
    """greedy_decode with a step the sandbox builds: a small RNN, or a scripted table."""
    B, H, V, L = 3, 5, 7, 6
    if kind == "rnn":
        tensors = {
            "embedding": inputs.randn(generator, V, H),
            "W_hh": inputs.weights(generator, H, H),
            "W_out": inputs.weights(generator, V, H) * 4,
        }
    else:
        logits = inputs.randn(generator, L, B, V)
        logits[..., 0] = -50.0  # eos (token 0) is never the most likely ...
        logits[2, 1, 0] = 50.0  # ... but for row 1 at the third step
        tensors = {"logits": logits}
    step = Callback("step", kind, tensors)
    h0 = inputs.randn(generator, B, H)
    return [Call("greedy_decode", (step, h0, 1, 0, L), **options)]


def _decode_battery():
    scripted = partial(_decode_calls, kind="scripted")
    checks = (
        Check("decode_rnn", "greedy_decode", 1, _decode_calls, "wrong.", JUDGE),
        Check("decode_scripted", "greedy_decode", 1, scripted, "wrong.", JUDGE),
    )
    return Battery("ch01_seq2seq", "solutions.ch01_seq2seq", checks, {})


def _decode_without_feeding_eos(step, h0, bos_id, eos_id, max_len):
    """Finished rows are fed their argmax instead of eos: the step sees other tokens."""
    tokens, prev = [], torch.full((h0.shape[0],), bos_id, dtype=torch.long, device=h0.device)
    finished, h = torch.zeros_like(prev, dtype=torch.bool), h0
    for _ in range(max_len):
        logits, h = step(prev, h)
        prev = logits.argmax(dim=-1)
        tokens.append(torch.where(finished, eos_id, prev))
        finished = finished | (prev == eos_id)
    return torch.stack(tokens, dim=1)


def test_a_callable_argument_crosses_the_sandbox_as_data():
    battery = _decode_battery()
    plan = make_plan(battery, 11)
    expected = run_reference(battery, plan)
    assert expected["decode_scripted"][0].calls == {"step": 6}
    assert expected["decode_scripted"][0].recorded["step"].shape == (6, 3)
    cells = ["import torch\n" + inspect.getsource(seq2seq.greedy_decode)]
    with Worker() as worker:
        report = worker.run(cells, plan.calls)
    outcomes = judge_plan(battery, plan, report.results, expected, report.failures)
    assert all(outcome.passed for outcome in outcomes), [o.reason for o in outcomes]
    wrong = {"greedy_decode": _decode_without_feeding_eos}
    actual = {name: [execute_call(wrong, c) for c in calls] for name, calls in plan.calls.items()}
    reasons = [o.reason for o in judge_plan(battery, plan, actual, expected)]
    assert any("passed to step differ" in r or "called step" in r for r in reasons), reasons


# A tensor kept on its own device ------------------------------------------------------------


def test_a_tensor_kept_on_its_device_stays_there_across_the_sandbox():
    """``OnDevice`` keeps an argument (lengths on the CPU) off the call's device (here meta,
    which any machine has), through the codec and in the sandboxed child."""
    x, lengths = torch.randn(3, 4), torch.tensor([4, 1, 2])
    call = Call("where_lengths", (x, OnDevice(lengths)), device="meta")
    packer = TensorPacker()
    again = decode_call(encode_call(call, packer), packer.tensors)
    assert isinstance(again.args[1], OnDevice) and torch.equal(again.args[1].tensor, lengths)
    cell = (
        "def where_lengths(x, lengths):\n"
        "    return x.sum(dim=-1), lengths * 2, lengths.device.type == 'cpu'\n"
    )
    with Worker() as worker:
        report = worker.run([cell], {"check": [call]})
    (result,) = report.results["check"]
    assert result.error is None, result.error
    summed, doubled, _ = result.outputs
    assert summed.device.type == "meta" and doubled.device.type == "cpu"
    assert torch.equal(doubled, lengths * 2)
    assert torch.equal(result.inputs_after["args[1]"], lengths)


# A class contract, with weights injected ---------------------------------------------------


def _layer_calls(generator, norm_first=False, **options):
    B, T, D, heads, d_ff = 2, 5, 8, 2, 12
    torch.manual_seed(inputs.seed(generator))
    state = nn.TransformerEncoderLayer(D, heads, d_ff, batch_first=True).state_dict()
    module = Module((D, heads, d_ff), {"norm_first": norm_first}, state)
    return [Call("EncoderLayer", (inputs.randn(generator, B, T, D),), module=module, **options)]


class _SwappedNorms(transformer.EncoderLayer):
    """Normalises before each block when asked to normalise after, and the other way."""

    def forward(self, x, mask=None):
        self.norm_first = not self.norm_first
        try:
            return super().forward(x, mask)
        finally:
            self.norm_first = not self.norm_first


def test_a_class_contract_is_graded_with_injected_weights():
    checks = tuple(
        Check(f"layer_{flag}", "EncoderLayer", 1, partial(_layer_calls, norm_first=flag), "", JUDGE)
        for flag in (False, True)
    )
    mutants = (Mutant("EncoderLayer", "swapped", "post- and pre-norm swapped.", _SwappedNorms),)
    battery = Battery("ch06_transformer", "solutions.ch06_transformer", checks, {}, mutants)
    plan = make_plan(battery, 3)
    expected = run_reference(battery, plan)
    cells = [inspect.getsource(transformer)]
    with Worker() as worker:
        report = worker.run(cells, plan.calls)
    outcomes = judge_plan(battery, plan, report.results, expected, report.failures)
    assert all(outcome.passed for outcome in outcomes), [o.reason for o in outcomes]
    wrong = {"EncoderLayer": _SwappedNorms}
    actual = {name: [execute_call(wrong, c) for c in calls] for name, calls in plan.calls.items()}
    outcomes = judge_plan(battery, plan, actual, expected)
    assert [o.mistake for o in outcomes] == ["post- and pre-norm swapped."] * 2


# Forbidden lists per function ----------------------------------------------------------------


def _normalise_calls(generator, **options):
    return [Call("normalise", (inputs.randn(generator, 3, 4),), **options)]


def normalise(x):
    """Layer normalisation by hand: the toy contract that may not reach F.layer_norm."""
    mean = x.mean(-1, keepdim=True)
    return (x - mean) / (x.var(-1, unbiased=False, keepdim=True) + 1e-5).sqrt()


def block(x):
    """A toy contract that may use F.layer_norm (it is not on its list)."""
    return torch.nn.functional.layer_norm(x, x.shape[-1:]) * 2


def _block_calls(generator, **options):
    return [Call("block", (inputs.randn(generator, 3, 4),), **options)]


def test_forbidden_lists_are_per_function():
    """F.layer_norm costs 'normalise' everything and 'block' nothing."""
    checks = (
        Check("normalise_values", "normalise", 1, _normalise_calls, "wrong.", JUDGE),
        Check("block_values", "block", 1, _block_calls, "wrong.", JUDGE),
    )
    battery = Battery("toy", "tests.test_kit", checks, {"normalise": ("F.layer_norm",)})
    cheat = {"normalise": lambda x: torch.nn.functional.layer_norm(x, x.shape[-1:]), "block": block}
    plan = make_plan(battery, 1)
    expected = run_reference(battery, plan)
    actual = {
        name: [execute_call(cheat, c, battery.forbidden.get(c.function, ())) for c in calls]
        for name, calls in plan.calls.items()
    }
    outcomes = judge_plan(battery, plan, actual, expected)
    assert scores_by_function(battery, outcomes) == {"normalise": 0, "block": 1}
    assert "reaches the forbidden operation F.layer_norm" in outcomes[0].reason

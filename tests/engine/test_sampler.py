"""Sampler on synthetic logits: each knob against its definition."""

from __future__ import annotations

import math

import pytest
import torch

from tenk.engine.sampler import Sampler, SamplingBatch
from tenk.engine.sampling_params import SamplingParams
from tenk.engine.sequence import Request

V = 8
EOS = (7,)


def seqs_for(params, prompt=(1, 2, 3), outputs=None):
    out = []
    for i, p in enumerate(params):
        s = Request(f"r{i}", list(prompt), p, 0.0, max_tokens=100).seqs[0]
        if outputs is not None:
            s.token_ids += outputs[i]
        out.append(s)
    return out


def sample(logits, params, outputs=None, seqs=None):
    seqs = seqs or seqs_for(params, outputs=outputs)
    b = SamplingBatch.from_seqs(seqs, V, EOS, torch.device("cpu"))
    return Sampler().sample(logits.clone(), b), seqs


def base_logits(rows):
    return torch.tensor([[2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, 1.8]]).repeat(rows, 1)


def test_greedy_is_argmax():
    logits = torch.randn(5, V)
    out, _ = sample(logits, [SamplingParams(temperature=0.0)] * 5)
    assert out.token_ids == logits.argmax(-1).tolist() and out.logprobs is None


def test_bf16_logits_sample_as_their_fp32_upcast():
    """The engine hands the sampler logits in the weights' dtype: a plain greedy batch takes the
    argmax of the bf16 values (ties: the first index, as over fp32), every other batch works on the
    exact fp32 upcast."""
    logits = torch.randn(64, V).to(torch.bfloat16)
    logits[:, 5] = logits[:, 2] = logits.float().amax(-1).to(torch.bfloat16) + 1  # a tie in every row
    greedy = [SamplingParams(temperature=0.0)] * 64
    out, _ = sample(logits, greedy)
    assert out.token_ids == logits.float().argmax(-1).tolist() == [2] * 64
    for params, outputs in [([SamplingParams(temperature=0.0, logprobs=1)] * 64, None),
                            ([SamplingParams(temperature=0.0, repetition_penalty=1.3)] * 64, [[2]] * 64),
                            ([SamplingParams(temperature=0.0, min_tokens=5)] * 64, None)]:
        torch.manual_seed(0)
        low, _ = sample(logits, params, outputs=outputs)
        torch.manual_seed(0)
        high, _ = sample(logits.float(), params, outputs=outputs)
        assert low == high


def test_temperature_sampling_follows_softmax():
    n = 4000
    logits = base_logits(n)
    out, _ = sample(logits, [SamplingParams(temperature=0.7)] * n)
    freq = torch.bincount(torch.tensor(out.token_ids), minlength=V).float() / n
    want = torch.softmax(logits[0] / 0.7, -1)
    assert (freq - want).abs().max() < 0.03


def test_top_k_top_p_min_p_restrict_support():
    n = 2000
    logits = base_logits(n)
    probs = torch.softmax(logits[0], -1)  # order: 0, 7, 1, 2, 3, ...
    cases = {
        "top_k": (SamplingParams(top_k=2), {0, 7}),
        # the nucleus: smallest set whose mass reaches top_p
        "top_p": (SamplingParams(top_p=float(probs[0] + probs[7] + 0.01)), {0, 7, 1}),
        "min_p": (SamplingParams(min_p=float(probs[1] / probs[0]) - 0.01), {0, 7, 1}),
        "top_k=1": (SamplingParams(top_k=1, temperature=5.0), {0}),
    }
    for name, (p, allowed) in cases.items():
        out, _ = sample(logits, [p] * n)
        assert set(out.token_ids) == allowed, name


def test_mixed_batch_greedy_rows_stay_greedy():
    logits = base_logits(6)
    params = [SamplingParams(temperature=0.0), SamplingParams(temperature=2.0, top_k=3)] * 3
    out, _ = sample(logits, params)
    assert out.token_ids[0::2] == [0, 0, 0]
    assert set(out.token_ids[1::2]) <= {0, 7, 1}


def test_seeded_rows_do_not_depend_on_batch_mates():
    def run(batch_prefix):
        params = [SamplingParams(temperature=1.0)] * batch_prefix + [SamplingParams(temperature=1.0, seed=42)]
        seqs = seqs_for(params)
        tokens = []
        for _ in range(20):
            out, _ = sample(base_logits(len(params)), params, seqs=seqs)
            tokens.append(out.token_ids[-1])
        return tokens

    alone, crowded = run(0), run(5)
    assert alone == crowded
    assert len(set(alone)) > 1


def test_penalties():
    logits = torch.tensor([[2.0, 1.0, -1.0, 0.5, 0.0, 0.0, 0.0, 0.0]])
    # repetition: token 0 (prompt) and token 2 (output) are penalised, by division / multiplication
    p = SamplingParams(temperature=0.0, repetition_penalty=2.0)
    seqs = seqs_for([p], prompt=(0,), outputs=[[2]])
    b = SamplingBatch.from_seqs(seqs, V, EOS, torch.device("cpu"))
    from tenk.engine.sampler import apply_penalties

    got = apply_penalties(logits.clone(), b, V)
    assert got[0].tolist() == [1.0, 1.0, -2.0, 0.5, 0.0, 0.0, 0.0, 0.0]
    # frequency counts repeats; presence counts once; prompt tokens do not count for either
    p = SamplingParams(temperature=0.0, frequency_penalty=0.5, presence_penalty=0.25)
    seqs = seqs_for([p], prompt=(1,), outputs=[[0, 0, 3]])
    b = SamplingBatch.from_seqs(seqs, V, EOS, torch.device("cpu"))
    got = apply_penalties(logits.clone(), b, V)
    assert got[0].tolist() == pytest.approx([2.0 - 1.0 - 0.25, 1.0, -1.0, 0.5 - 0.5 - 0.25, 0, 0, 0, 0])
    # and through the sampler: a strong penalty moves greedy off the repeated winner
    out, _ = sample(logits, [SamplingParams(temperature=0.0, frequency_penalty=2.0)], outputs=[[0, 0]])
    assert out.token_ids == [1]


def test_min_tokens_bans_eos_and_stop_ids_until_reached():
    logits = torch.zeros(3, V)
    logits[:, 7] = 10.0  # EOS wins
    logits[:, 5] = 9.0  # then a stop id
    params = [
        SamplingParams(temperature=0.0, min_tokens=2),  # 1 token out: EOS banned
        SamplingParams(temperature=0.0, min_tokens=2, stop_token_ids=[5]),  # EOS and 5 banned
        SamplingParams(temperature=0.0, min_tokens=1),  # 1 token out: nothing banned
    ]
    out, _ = sample(logits, params, outputs=[[4], [4], [4]])
    assert out.token_ids == [5, 0, 7]
    out, _ = sample(logits[:1], [SamplingParams(temperature=0.0, min_tokens=3, ignore_eos=True)], outputs=[[4]])
    assert out.token_ids == [7]  # ignore_eos: EOS is an ordinary token, not banned


def test_logprobs_are_raw_and_include_the_sample():
    logits = base_logits(2)
    params = [SamplingParams(temperature=0.0, logprobs=2, repetition_penalty=1.5), SamplingParams(temperature=0.0)]
    out, _ = sample(logits, params, outputs=[[3], [3]])
    raw = torch.log_softmax(logits[0], -1)
    lp = out.logprobs[0]
    assert set(lp) == {0, 7} and lp[0] == pytest.approx(raw[0].item())
    assert out.logprobs[1] is None
    # temperature sampling can return a token outside the top-k; it is added
    logits = torch.zeros(1, V)
    seen_extra = False
    for _ in range(30):
        out, _ = sample(logits, [SamplingParams(temperature=1.0, logprobs=1)])
        lp = out.logprobs[0]
        assert out.token_ids[0] in lp and len(lp) in (1, 2)
        assert all(v == pytest.approx(-math.log(V)) for v in lp.values())
        seen_extra |= len(lp) == 2
    assert seen_extra


def test_sampling_params_validation():
    bad = [
        (dict(n=0), "n must be"),
        (dict(temperature=-1), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_k=-2), "top_k"),
        (dict(min_p=1.5), "min_p"),
        (dict(repetition_penalty=0.0), "repetition_penalty"),
        (dict(presence_penalty=3.0), "presence_penalty"),
        (dict(max_tokens=0), "max_tokens"),
        (dict(min_tokens=5, max_tokens=2), "min_tokens"),
        (dict(stop=[""]), "stop strings"),
        (dict(stop=3), "stop must be"),
        (dict(stop_token_ids=[-1]), "stop_token_ids"),
        (dict(logprobs=50), "logprobs"),
        (dict(seed="x"), "seed"),
    ]
    for kwargs, msg in bad:
        with pytest.raises(ValueError, match=msg):
            SamplingParams(**kwargs)
    p = SamplingParams(stop="###", top_k=-1, temperature=0.0, top_p=0.5)
    assert p.stop_strs == ["###"] and p.top_k == 0 and p.top_p == 1.0 and p.is_greedy
    assert p.stop_buffer_len == 2
    assert SamplingParams(stop=["ab"], include_stop_str_in_output=True).stop_buffer_len == 0

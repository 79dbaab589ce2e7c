import math

import torch

from lmstack.infer.detokenizer import IncrementalDetokenizer
from lmstack.infer.params import SamplingParams
from lmstack.infer.sampler import TWO_PASS_MIN_NUMEL, RowSettings, apply_penalties, filter_logits, greedy_tokens, sample


def test_filters_keep_exactly_the_hand_computed_tokens():
    probs = torch.tensor([[0.5, 0.25, 0.15, 0.07, 0.03]])
    logits = probs.log()
    kept = lambda row: (filter_logits(logits, [row]) > float("-inf"))[0].nonzero().flatten().tolist()  # noqa: E731
    assert kept(RowSettings(top_k=2)) == [0, 1]
    assert kept(RowSettings(top_p=0.7)) == [0, 1]  # 0.5 < 0.7, 0.5 + 0.25 >= 0.7
    assert kept(RowSettings(top_p=0.75)) == [0, 1]
    assert kept(RowSettings(top_p=0.76)) == [0, 1, 2]
    assert kept(RowSettings(min_p=0.4)) == [0, 1]  # keep p >= 0.4 * 0.5
    scaled = filter_logits(logits, [RowSettings(temperature=2.0)])
    assert torch.allclose(scaled.softmax(-1), (probs.sqrt() / probs.sqrt().sum()))


def test_rows_sample_with_their_own_generator_and_greedy_rows_take_the_argmax():
    logits = torch.randn(3, 50)
    gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
    rows = [RowSettings(temperature=1.0, generator=gens[0]), RowSettings(temperature=0.0),
            RowSettings(temperature=1.0, generator=gens[1])]
    tokens = sample(logits, rows)
    assert tokens[1] == logits[1].argmax()
    alone = sample(logits[2:], [RowSettings(temperature=1.0, generator=torch.Generator().manual_seed(2))])
    assert tokens[2] == alone[0]


def test_greedy_tokens_equal_argmax_with_ties_nan_and_a_vocab_that_is_no_multiple_of_the_chunk():
    generator = torch.Generator().manual_seed(0)
    for vocab in (8192, 5121, 50257):  # a multiple of the chunk, and two that are not
        rows = max(3, TWO_PASS_MIN_NUMEL // vocab + 1)  # big enough for the two passes
        tail_max = torch.randn(rows, vocab, generator=generator)
        tail_max[:, -1] = 9.0  # in the last chunk, padded when vocab is no multiple of it
        cases = {"random": torch.randn(rows, vocab, generator=generator), "max in the last chunk": tail_max,
                 "ties": torch.randint(0, 3, (rows, vocab), generator=generator).float()}  # the first max must win
        special = torch.randn(rows, vocab, generator=generator)
        special[0, vocab // 2] = special[1, vocab - 1] = float("nan")  # NaN counts as the max, as in argmax
        special[-1] = float("-inf")  # all -inf: index 0
        cases["nan and -inf"] = special
        for name, logits in cases.items():
            assert logits.numel() >= TWO_PASS_MIN_NUMEL
            assert torch.equal(greedy_tokens(logits), logits.argmax(dim=1)), (vocab, name)
    small = torch.randn(1, 300, generator=generator)
    assert torch.equal(greedy_tokens(small), small.argmax(dim=1))


def test_penalties_match_the_documented_formulas():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    params = SamplingParams(repetition_penalty=2.0, frequency_penalty=0.5, presence_penalty=0.25, logit_bias={3: -10.0})
    out = apply_penalties(logits, [0], [params], prompt_ids=[[0]], output_ids=[[1, 1, 2]])
    expected = [2.0 / 2, -1.0 * 2 - 0.5 * 2 - 0.25, 0.5 / 2 - 0.5 - 0.25, 3.0 - 10.0]
    assert torch.allclose(out[0], torch.tensor(expected))


class CharTokenizer:
    """Bytes as tokens, decoded like byte-level BPE: incomplete UTF-8 shows as U+FFFD."""

    def decode(self, ids, skip_special=False):
        return bytes(ids).decode("utf-8", errors="replace")


def feed(detok, text):
    """Add the bytes of `text` until a stop string is found, as the engine does."""
    out = ""
    for b in text.encode():
        delta, stopped = detok.add(b)
        out += delta
        if stopped:
            return out, True
    return out, False


def test_partial_utf8_is_held_back_until_the_character_is_complete():
    detok = IncrementalDetokenizer(CharTokenizer(), [])
    deltas = [detok.add(b)[0] for b in "é🙂".encode()]
    assert deltas == ["", "é", "", "", "", "🙂"]


def test_stop_string_across_tokens_is_cut_and_its_prefix_held_back():
    detok = IncrementalDetokenizer(CharTokenizer(), ["STOP", "xyz"])
    text, stopped = feed(detok, "abc ST")
    assert (text, stopped) == ("abc ", False)  # "ST" might start "STOP"
    text, stopped = feed(detok, "OP and more")
    assert (text, stopped) == ("", True)
    detok = IncrementalDetokenizer(CharTokenizer(), ["STOP"])
    assert feed(detok, "a STAR") == ("a STAR", False)
    assert feed(detok, " ST") == (" ", False) and detok.flush() == "ST"
    assert math.isclose(len(detok.text), len("a STAR ST"))


def test_include_stop_keeps_the_earliest_stop_string_and_cuts_after_it():
    detok = IncrementalDetokenizer(CharTokenizer(), ["xyz", "TOP", "STOP"], include_stop=True)
    assert feed(detok, "abc ST") == ("abc ", False)
    assert feed(detok, "OP and more") == ("STOP", True)  # both end at "P": the one starting first; nothing after it

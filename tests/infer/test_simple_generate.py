from infer_helpers import recompute_greedy, tiny_model

from lmstack.infer.simple import generate


def test_dense_cache_greedy_matches_full_recompute(arch):
    model = tiny_model(arch)
    prompt = [1, 5, 7, 9, 11]
    assert generate(model, prompt, 60, temperature=0) == recompute_greedy(model, prompt, 60)


def test_seeded_sampling_repeats_and_stop_ids_end_generation(arch):
    model = tiny_model(arch)
    first = generate(model, [3, 4], 30, temperature=1.0, top_k=20, seed=7)
    assert first == generate(model, [3, 4], 30, temperature=1.0, top_k=20, seed=7)
    assert len(first) == 30
    stop = first[5]
    cut = generate(model, [3, 4], 30, temperature=1.0, top_k=20, seed=7, stop_ids=[stop])
    assert cut == first[:first.index(stop)]

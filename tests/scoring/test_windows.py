from miniplm.scoring.windows import plan_batches, windows_for


def test_windows_score_every_token_once():
    for max_length in (1, 2, 5, 16):
        for stride in range(0, max_length):
            for n in range(0, 3 * max_length + 2):
                ws = windows_for(0, n, max_length, stride)
                assert all(w.length <= max_length for w in ws)
                targets = [w.start + 1 + k for w in ws for k in range(w.skip, w.length)]
                assert targets == list(range(1, n + 1)), (max_length, stride, n)
                assert all(w.skip == (stride if i else 0) for i, w in enumerate(ws))


def test_batches_respect_the_token_budget_and_cover_every_window():
    ws = [w for d, n in enumerate([3, 40, 7, 7, 19, 1, 64, 33]) for w in windows_for(d, n, 16, 4)]
    batches = plan_batches(ws, batch_tokens=40)
    assert sorted((w.doc, w.start) for b in batches for w in b) == sorted((w.doc, w.start) for w in ws)
    for b in batches:
        assert len(b) * max(w.length for w in b) <= 40
        assert [w.length for w in b] == sorted((w.length for w in b), reverse=True)
    assert plan_batches(list(reversed(ws)), 40) == batches  # a function of the windows, not their order

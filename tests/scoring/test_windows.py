from miniplm.scoring.windows import pack_instances, plan_batches, windows_for


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


def test_pack_instances_records_where_each_piece_came_from():
    docs = [[1, 2, 3], [4, 5, 6, 7, 8], [9]]
    instances, pieces = pack_instances(docs, eos=0, length=4)
    assert instances == [[1, 2, 3, 0], [4, 5, 6, 7], [8, 0, 9, 0]]
    assert pieces == [[(0, 0, 4, 0)], [(1, 0, 4, 0)], [(1, 4, 6, 0), (2, 0, 2, 2)]]
    # every token of every document (and its EOS) lands in exactly one instance
    rebuilt = {d: [] for d in range(3)}
    for inst, ps in zip(instances, pieces):
        for d, s, e, o in ps:
            rebuilt[d].extend(inst[o : o + e - s])
    assert rebuilt == {d: docs[d] + [0] for d in range(3)}

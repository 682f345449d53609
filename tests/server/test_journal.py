from miniplm.server.journal import FILE, RequestJournal


def test_answers_survive_a_restart_and_a_cut_last_line(tmp_path):
    with RequestJournal(tmp_path, "server model 'a'") as journal:
        journal.add([0, 1], {"text": "one"})
        journal.add("doc-7", {"failed": "status 400: too long"})
    path = tmp_path / FILE
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"key": [2, 0], "text": "cut sh')  # killed mid-write
    with RequestJournal(tmp_path, "server model 'a'") as journal:
        assert journal.done == {(0, 1): {"text": "one"}, "doc-7": {"failed": "status 400: too long"}}
        assert path.read_bytes() == whole  # the cut line is gone, so the next one starts a line of its own
        journal.add([2, 0], {"text": "two"})
    with RequestJournal(tmp_path, "server model 'a'") as journal:
        assert journal.done[(2, 0)] == {"text": "two"}


def test_answers_from_another_server_model_are_dropped(tmp_path):
    with RequestJournal(tmp_path, "server model 'a'") as journal:
        journal.add([0, 0], {"text": "one"})
    with RequestJournal(tmp_path, "server model 'b'") as journal:
        assert journal.done == {}
    assert not (tmp_path / FILE).read_bytes()

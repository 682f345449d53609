import pytest

from miniplm.config import ConfigError, apply_overrides, read_job
from miniplm.job import load_job
from miniplm.stages import stage_config_hash


@pytest.fixture
def corpus_file(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "hello"}\n')
    return path


def test_loads_defaults_and_overrides(write_job, corpus_file):
    job_path = write_job([{"path": str(corpus_file), "format": "jsonl"}])
    job = load_job(job_path, ["corpus.docs_per_shard=7", "seed=3", "corpus.inputs.0.text_field=body"])
    assert job.corpus.docs_per_shard == 7
    assert job.seed == 3
    assert job.corpus.inputs[0].text_field == "body"
    assert job.corpus.reference_fraction == 0.05 and job.corpus.heldout_fraction == 0.01
    assert job.corpus.on_error == "skip"


def test_unknown_key_is_named_with_the_file(write_job, corpus_file):
    job_path = write_job([{"path": str(corpus_file), "format": "jsonl"}], docs_per_shrad=5)
    with pytest.raises(ConfigError) as err:
        load_job(job_path)
    assert str(job_path) in str(err.value)
    assert "corpus.docs_per_shrad: unknown key" in str(err.value)


def test_unknown_override_key_is_named(write_job, corpus_file):
    job_path = write_job([{"path": str(corpus_file), "format": "jsonl"}])
    with pytest.raises(ConfigError, match=r"corpus\.keep_fracton: unknown key") as err:
        load_job(job_path, ["corpus.keep_fracton=0.3"])
    assert "overrides corpus.keep_fracton=0.3" in str(err.value)


@pytest.mark.parametrize(
    "corpus, key, words",
    [
        ({"docs_per_shard": "many"}, "corpus.docs_per_shard", "integer"),
        ({"docs_per_shard": 0}, "corpus.docs_per_shard", "greater than 0"),
        ({"reference_fraction": 1.5}, "corpus.reference_fraction", "less than 1"),
        ({"on_error": "ignore"}, "corpus.on_error", "'skip' or 'fail'"),
        ({"reference_fraction": 0.6, "heldout_fraction": 0.5}, "corpus", "below 1"),
        ({"docs_per_shard": True}, "corpus.docs_per_shard", "expected a number, not a boolean (got True)"),
    ],
)
def test_bad_values_are_named(write_job, corpus_file, corpus, key, words):
    job_path = write_job([{"path": str(corpus_file), "format": "jsonl"}], **corpus)
    with pytest.raises(ConfigError) as err:
        load_job(job_path)
    msg = str(err.value)
    assert str(job_path) in msg and f"  {key}: " in msg and words in msg


def test_bad_format_and_missing_keys(write_job, corpus_file):
    job_path = write_job([{"path": str(corpus_file), "format": "csv"}])
    with pytest.raises(ConfigError, match=r"corpus\.inputs\.0\.format: Input should be 'jsonl'"):
        load_job(job_path)
    job_path = write_job([{"format": "jsonl"}])
    with pytest.raises(ConfigError, match=r"corpus\.inputs\.0\.path: required key is missing"):
        load_job(job_path)


def test_missing_input_path_fails_before_work(write_job, tmp_path):
    job_path = write_job([{"path": str(tmp_path / "nope/*.jsonl"), "format": "jsonl"}])
    with pytest.raises(ConfigError, match=r"corpus\.inputs\.0\.path: nothing found at .*nope"):
        load_job(job_path)
    assert not (tmp_path / "run").exists()


def test_unreadable_or_non_mapping_job_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read job file"):
        load_job(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="YAML mapping"):
        load_job(bad)
    bad.write_text("run_dir: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_job(bad)


def test_override_syntax():
    data = {"a": {"b": 1}, "l": [{"x": 1}]}
    apply_overrides(data, ["a.b=2", "a.c=[1, 2]", "l.0.x=null", "new.key=text"])
    assert data == {"a": {"b": 2, "c": [1, 2]}, "l": [{"x": None}], "new": {"key": "text"}}
    for bad in ["novalue", "=3", "a..b=1", "l.5.x=1", "a.b.c=1"]:
        with pytest.raises(ConfigError):
            apply_overrides({"a": {"b": 1}, "l": [{}]}, [bad])


def test_stage_hash_depends_only_on_the_stage_sections(write_job, corpus_file, tmp_path):
    job_path = write_job([{"path": str(corpus_file), "format": "jsonl"}])
    base = stage_config_hash(load_job(job_path), "prepare")
    assert stage_config_hash(load_job(job_path, [f"run_dir={tmp_path / 'elsewhere'}"]), "prepare") == base
    assert stage_config_hash(load_job(job_path, ["seed=1"]), "prepare") != base
    assert stage_config_hash(load_job(job_path, ["corpus.docs_per_shard=3"]), "prepare") != base


def test_source_name_defaults_to_the_path_stem():
    from miniplm.config import InputSpec

    assert InputSpec(path="data/web/*.jsonl.gz", format="jsonl").source_name == "web"
    assert InputSpec(path="data/books.jsonl.zst", format="jsonl").source_name == "books"
    assert InputSpec(path="x/*.parquet", format="parquet", name="wiki").source_name == "wiki"


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_a_threshold_is_a_finite_number(write_job, corpus_file, value):
    job_path = write_job([{"path": str(corpus_file), "format": "jsonl"}])
    with pytest.raises(ConfigError, match=r"select\.min_teacher_logprob(\.float)?: Input should be a finite number"):
        load_job(job_path, [f"select.min_teacher_logprob={value}"])  # .nan would switch the filter off
    assert load_job(job_path, ["select.min_teacher_logprob=-6"]).select.min_teacher_logprob == -6.0


def test_a_job_file_that_is_not_utf8_is_named(tmp_path):
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("seed: 0\nrun_dir: runs/caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.yaml: a job file is UTF-8 text, and line 2 is not \(byte 0xe9"):
        load_job(bad)


def test_an_override_of_one_budget_replaces_the_other(write_job, corpus_file, tmp_path):
    job_path = write_job([{"path": str(corpus_file), "format": "jsonl"}])
    with_fraction = job_path.read_text() + "select: {keep_fraction: 0.3}\n"
    job_path.write_text(with_fraction)
    job = load_job(job_path, ["select.keep_tokens=5000"])
    assert job.select.keep_tokens == 5000 and "keep_fraction" not in job.select.model_fields_set
    assert load_job(job_path).select.keep_fraction == 0.3
    with pytest.raises(ConfigError, match="give one budget: keep_fraction, keep_tokens or keep_token_fraction"):
        load_job(job_path, ["select.keep_tokens=5000", "select.keep_fraction=0.2"])  # both on the command line
    job_path.write_text(with_fraction.replace("keep_fraction: 0.3", "keep_tokens: 100"))
    assert load_job(job_path, ["select.keep_fraction=0.2"]).select.keep_tokens is None
    job_path.write_text(with_fraction.replace("keep_fraction: 0.3", "keep_token_fraction: 0.5"))  # the paper's budget
    job = load_job(job_path, ["select.keep_fraction=0.2"])
    assert job.select.keep_fraction == 0.2 and job.select.keep_token_fraction is None


def test_run_dir_and_model_paths_may_start_at_home(write_job, corpus_file, tmp_path, monkeypatch):
    from miniplm.cli import main

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    job_path = write_job([{"path": str(corpus_file), "format": "jsonl"}])
    assert main(["prepare", str(job_path), "-q", "run_dir=~/x"]) == 0
    assert (tmp_path / "home" / "x" / "docs" / "stats.json").exists()
    assert not (work / "~").exists()
    job = read_job(job_path, ["teacher.model=~/models/teacher"])  # the schema alone: no model is there
    assert job.teacher.model == str(tmp_path / "home" / "models" / "teacher")


def test_a_model_folder_without_a_model_fails_before_work(write_job, corpus_file, tmp_path):
    empty = tmp_path / "empty-model"
    empty.mkdir()
    job_path = write_job([{"path": str(corpus_file), "format": "jsonl"}])
    with pytest.raises(ConfigError, match=r"reference\.model: the folder .*empty-model' holds no model \(no config"):
        load_job(job_path, [f"reference.model={empty}", "teacher.model=smollm2-135m"])


def test_a_job_file_with_yaml_aliases_is_refused(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 8)]
    bomb.write_text("seed: 0\n" + "\n".join(levels) + "\n")
    with pytest.raises(ConfigError, match=r"bomb\.yaml: .*line 3.*alias"):
        read_job(bomb)  # refused while composing: nothing is expanded
    with pytest.raises(ConfigError, match="alias"):
        apply_overrides({}, ["seed=[&a 1, *a]"])


def test_a_duplicate_key_in_a_job_file_is_named(tmp_path):
    job = tmp_path / "dup.yaml"
    job.write_text("seed: 0\nselect:\n  keep_fraction: 0.3\n  keep_fraction: 0.5\n")
    with pytest.raises(ConfigError, match=r"dup\.yaml: .*line 4, column 3: duplicate key 'keep_fraction'"):
        read_job(job)
    with pytest.raises(ConfigError, match="duplicate key 'a'"):
        apply_overrides({}, ["x={a: 1, a: 2}"])


def _named_job(tmp_path, **sections):
    """A job with one of every named thing, as read from a file (the schema alone)."""
    import yaml

    data = {
        "run_dir": str(tmp_path / "run"),
        "corpus": {"inputs": [{"path": "d.jsonl", "format": "jsonl"}]},
        "teacher": {"model": "smollm2-135m"},
        "tokenize": [{"name": "sel"}],
        "students": [{"name": "s", "preset": "tiny", "tokens": "sel", "steps": 1}],
    }
    data.update(sections)
    path = tmp_path / "named.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


STUDENT = {"preset": "tiny", "tokens": "sel", "steps": 1}


@pytest.mark.parametrize("name", ["..", ".", ".hidden", "a/b", "..\\x"])
@pytest.mark.parametrize(
    "key, sections",
    [
        ("students.1.name", lambda n: {"students": [{"name": "s", **STUDENT}, {"name": n, **STUDENT}]}),
        ("prune.0.name", lambda n: {"prune": [{"name": n, "target": {"preset": "tiny"}}]}),
        ("generate.0.name", lambda n: {"generate": [{"name": n}]}),
        ("tokenize.1.name", lambda n: {"tokenize": [{"name": "sel"}, {"name": n}]}),
        ("teacher_logits.0.name", lambda n: {"teacher_logits": [{"name": n, "tokens": "sel"}]}),
        ("eval.models.0.EvalModel.name", lambda n: {"eval": {"models": [{"name": n, "model": "m"}]}}),
    ],
)
def test_a_name_that_is_no_plain_folder_name_is_refused(tmp_path, name, key, sections):
    with pytest.raises(ConfigError) as err:
        read_job(_named_job(tmp_path, **sections(name)))  # `..` would build RUN_DIR/models/.. = RUN_DIR
    assert f"  {key}: " in str(err.value) and "not starting with '.'" in str(err.value)


@pytest.mark.parametrize(
    "sections, words",
    [
        (
            {"prune": [{"name": "s.seed1", "target": {"preset": "tiny"}}]},
            r"prune\.0\.name: 's\.seed1' is a seed replica of student 's'",
        ),
        (
            {"eval": {"seeds": 2, "models": ["students", {"name": "s.seed1", "model": "m"}]}},
            r"eval\.models\.1\.name: 's\.seed1' is a seed replica of student 's'",
        ),
        (
            {"students": [{"name": "s", **STUDENT}, {"name": "s.seed1", **STUDENT}]},
            r"students\.1\.name: 's\.seed1' is a seed replica of student 's'",
        ),
        ({"eval": {"models": [{"name": "s", "model": "m"}]}}, r"eval\.models\.0\.name: 's' names a model the job"),
        ({"eval": {"models": [{"name": "reference", "model": "m"}]}}, r"eval\.models\.0\.name: 'reference' names"),
    ],
)
def test_a_name_that_a_seed_replica_or_another_model_takes_is_refused(tmp_path, sections, words):
    seeds = {"eval": {"seeds": 2}} if "eval" not in sections else {}
    with pytest.raises(ConfigError, match="\n  " + words):  # the key leads its line
        read_job(_named_job(tmp_path, **seeds, **sections))


def test_replica_like_names_that_collide_with_nothing_load(tmp_path):
    job = read_job(_named_job(tmp_path, prune=[{"name": "s.seed1", "target": {"preset": "tiny"}}]))  # one seed
    assert job.prune[0].name == "s.seed1"
    job = read_job(_named_job(tmp_path, eval={"seeds": 2, "models": [{"name": "t.seed1", "model": "m"}]}))
    assert job.eval.models[0].name == "t.seed1"


@pytest.mark.parametrize(
    "override, key",
    [
        ("corpus.near_duplicates={threshold: 0.999}", r"corpus\.near_duplicates: threshold 0\.999 with num_perm 112"),
        (
            "corpus.near_duplicates={num_perm: 8}",
            r"corpus\.near_duplicates: bands x rows \(14 x 8\) is more than num_perm",
        ),
        ("seed=-1", r"  seed: Input should be greater than or equal to 0"),
        ("seed=4294967296", r"  seed: Input should be less than 4294967296"),
        (
            "tokenize=[{name: a, input: main}, {name: b, input: heldout}, {name: m, mix: {a: 1.0e+300, b: 1.0e-300}}]",
            r"tokenize\.2: mix: shares so far apart that 'b' would get no rows",
        ),
    ],
)
def test_settings_a_library_would_reject_later_fail_at_load(write_job, corpus_file, override, key):
    job_path = write_job([{"path": str(corpus_file), "format": "jsonl"}])
    with pytest.raises(ConfigError, match=key):
        read_job(job_path, [override])


def test_a_student_init_folder_is_a_model_with_the_token_sets_tokenizer(tiny_models, tmp_path):
    import json
    import shutil

    from tests.pipeline.jobs import tiny_job

    job_path = tiny_job(tmp_path, tiny_models)
    init = tmp_path / "init"
    shutil.copytree(tiny_models["teacher"], init)
    load_job(job_path, ["students.0.preset=null", f"students.0.init={init}"])
    tokenizer = json.loads((init / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    a, b = list(vocab)[100:102]
    vocab[a], vocab[b] = vocab[b], vocab[a]  # two ids swapped: every row would train on the wrong tokens
    (init / "tokenizer.json").write_text(json.dumps(tokenizer))
    with pytest.raises(ConfigError, match=r"students\.on-selected\.init: .* do not share a tokenizer"):
        load_job(job_path, ["students.0.preset=null", f"students.0.init={init}"])
    (init / "config.json").unlink()
    with pytest.raises(ConfigError, match=r"students\.0\.init: the folder .*init' holds no model \(no config\.json"):
        load_job(job_path, ["students.0.preset=null", f"students.0.init={init}"])

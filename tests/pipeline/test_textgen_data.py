"""The text corpus: the stdlib's documentation, split by document, deterministic; user text files;
prompts, windows and the xz baseline."""
import numpy as np
import pytest

from pipeline.data import text as corpus
from pipeline.errors import PipelineError
from pipeline.tasks.textgen import Windows, prompts_from, xz_bits_per_byte


@pytest.fixture(scope="module")
def docs():
    return corpus.stdlib_documents()


def test_stdlib_corpus_is_prose_split_by_document(docs):
    names = [d.name for d in docs]
    assert len(names) == len(set(names)) > 300
    assert any(n.startswith("topic:") for n in names) and any(n.startswith("module:") for n in names)
    assert not any(".test." in n or n.startswith("module:test.") for n in names)
    splits = corpus.split_documents(docs, 0.05, 0.05)
    assert sum(len(v) for v in splits.values()) == len(docs)
    train, test = (set(d.name for d in splits[k]) for k in ("train", "test"))
    assert not train & test and len(test) >= 5
    total = {k: len(corpus.as_bytes(v)) for k, v in splits.items()}
    assert total["train"] > 1_000_000 and 0.02 < total["test"] / sum(total.values()) < 0.1
    text = corpus.as_bytes(splits["test"]).decode()
    assert text.count(" the ") > 500  # English prose


def test_documents_are_cleaned_and_deduplicated(docs):
    paragraphs = [p for d in docs for p in d.text.split("\n\n")]
    assert len(paragraphs) == len(set(p.strip() for p in paragraphs))
    for d in docs:
        assert d.text == d.text.strip() and "\t" not in d.text and "\n\n\n" not in d.text
        assert len(d.text) >= corpus.MIN_CHARS


def test_the_split_is_stable_under_reordering(docs):
    a = corpus.split_documents(docs, 0.05, 0.05)
    b = corpus.split_documents(list(reversed(docs)), 0.05, 0.05)
    for k in a:
        assert sorted(d.name for d in a[k]) == sorted(d.name for d in b[k])


def test_user_text_folder_and_file(tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    for i in range(5):
        (folder / f"{i}.md").write_text(f"Note {i}.\n\n" + "Some words here. " * 60)
    (folder / "skip.bin").write_bytes(b"\x00" * 10)
    docs = corpus.user_documents(folder)
    assert [d.name for d in docs] == [f"file:{i}.md" for i in range(5)]
    one = tmp_path / "book.txt"
    one.write_text("\n\n".join(f"Paragraph {i}. " + "word " * 200 for i in range(30)))
    blocks = corpus.user_documents(one)
    assert len(blocks) > 3 and all(len(b.text) < 6000 for b in blocks)


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing", "no such file or folder"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "holds no .txt or .md files"),
    (lambda p: (p / "tiny.txt").write_text("hi") and p / "tiny.txt", "too little text"),
])
def test_bad_user_data_is_one_clear_error(tmp_path, make, message):
    with pytest.raises(PipelineError, match=message):
        corpus.user_documents(make(tmp_path))


def test_prompts_end_after_a_word_and_start_on_a_character():
    text = ("Ünïcödé wörds ând spaces " * 40).encode()
    for p in prompts_from(text, 20, 30, seed=1):
        assert p.endswith(b" ") and len(p) <= 30
        p.decode("utf-8")  # whole characters
    assert prompts_from(text, 5, 30, seed=1) == prompts_from(text, 5, 30, seed=1)


def test_windows_are_every_offset():
    w = Windows(bytes(range(100)), block=10)
    assert len(w) == 90 and w[0].tolist() == list(range(11)) and w[89][-1] == 99


def test_xz_baseline_rewards_repetition():
    rng = np.random.default_rng(0)
    noise = bytes(rng.integers(0, 256, 5000).astype(np.uint8))
    assert xz_bits_per_byte(b"hello world " * 500, b"hello world " * 20) < 0.5
    assert xz_bits_per_byte(b"hello world " * 500, noise) > 7.5


def test_config_errors_are_one_line():
    from pipeline.tasks import get_task
    from pipeline.tasks.base import resolve

    task = get_task("textgen")
    cfg = resolve(task, "smoke", {"data": {"block": 100}})
    with pytest.raises(PipelineError, match="data.block 100 is longer than model.context 64"):
        task.complete_config(None, cfg)
    with pytest.raises(PipelineError, match="top_p"):
        resolve(task, "smoke", {"inference": {"top_p": 2.0}})
    with pytest.raises(PipelineError, match="position"):
        resolve(task, "smoke", {"model": {"position": "absolute"}})

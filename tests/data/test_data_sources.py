"""Document sources: stdlib, text dirs, JSONL, parquet, hf:; and their errors."""

import json
import sys
import sysconfig
from pathlib import Path

import pytest

from lmstack.data.sources import SourceError, document_count, iter_documents


def test_stdlib_is_the_standard_library_without_packages_or_tests():
    docs = list(iter_documents("stdlib"))
    ids = {doc.id for doc in docs}
    assert {"os.py", "json/decoder.py", "asyncio/tasks.py"} <= ids
    assert not any(part in {"site-packages", "test", "tests", "__pycache__"} for i in ids for part in Path(i).parts)
    root = Path(sysconfig.get_paths()["stdlib"])
    assert next(d for d in docs if d.id == "os.py").text == (root / "os.py").read_text(encoding="utf-8")
    assert document_count("stdlib") >= len(docs)  # only empty files (e.g. some __init__.py) are skipped


def test_directory_reads_text_files_in_sorted_order(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.md").write_text("zed")
    (tmp_path / "a.txt").write_text("ay")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n")
    (tmp_path / ".hidden.txt").write_text("secret")
    docs = list(iter_documents(str(tmp_path)))
    assert [(d.id, d.text) for d in docs] == [("a.txt", "ay"), ("b/z.md", "zed")]
    assert [d.id for d in iter_documents(str(tmp_path), limit=1)] == ["a.txt"]
    assert [d.text for d in iter_documents(str(tmp_path / "a.txt"))] == ["ay"]


def test_jsonl_with_default_and_chosen_field(tmp_path):
    path = tmp_path / "corpus.jsonl"
    rows = [{"text": "one", "body": "uno"}, {"text": "two ✓", "body": "dos"}]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n\n")
    assert [(d.id, d.text) for d in iter_documents(str(path))] == [("corpus.jsonl:1", "one"), ("corpus.jsonl:2", "two ✓")]
    assert [d.text for d in iter_documents(str(path), text_field="body")] == ["uno", "dos"]
    with pytest.raises(SourceError, match=r"line 1 has no 'content' field \(it has \['body', 'text'\]\).*--text-field"):
        list(iter_documents(str(path), text_field="content"))
    path.write_text('{"text": "fine"}\n{not json\n')
    with pytest.raises(SourceError, match="line 2 is not valid JSON"):
        list(iter_documents(str(path)))


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "corpus.parquet"
    texts = [f"row {i} text" for i in range(2500)]  # more than one read batch
    pq.write_table(pa.table({"content": texts, "n": list(range(2500))}), path)
    docs = list(iter_documents(str(path), text_field="content"))
    assert [d.text for d in docs] == texts and docs[7].id == "corpus.parquet:7"
    assert document_count(str(path)) == 2500
    with pytest.raises(SourceError, match=r"has no column 'text' \(it has \['content', 'n'\]\)"):
        list(iter_documents(str(path)))


def test_hf_source_without_datasets_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # what `import datasets` sees when it isn't installed
    with pytest.raises(SourceError, match=r"needs the `datasets` package: pip install 'lmstack\[hf\]'"):
        list(iter_documents("hf:roneneldan/TinyStories"))


def test_hf_source_loads_a_local_dataset(tmp_path):
    pytest.importorskip("datasets")
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"story": f"story {i}"}) + "\n" for i in range(5)))
    docs = list(iter_documents(f"hf:{tmp_path}", text_field="story"))
    assert [d.text for d in docs] == [f"story {i}" for i in range(5)]


def test_empty_corpus_is_an_error(tmp_path):
    (tmp_path / "blank.txt").write_text("")
    with pytest.raises(SourceError, match=f"the corpus '{tmp_path}' is empty"):
        list(iter_documents(str(tmp_path)))


def test_unreadable_file_is_named(tmp_path):
    (tmp_path / "good.txt").write_text("fine")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(SourceError, match=r"cannot read '.*latin1\.txt': it is not UTF-8 text.*convert it"):
        list(iter_documents(str(tmp_path)))
    (tmp_path / "latin1.txt").unlink()
    (tmp_path / "gone.txt").symlink_to(tmp_path / "deleted.txt")
    with pytest.raises(SourceError, match=r"cannot read '.*gone\.txt': No such file"):
        list(iter_documents(str(tmp_path)))


def test_missing_and_unknown_sources(tmp_path):
    with pytest.raises(SourceError, match="does not exist; use stdlib, a directory"):
        list(iter_documents(str(tmp_path / "nope")))
    weird = tmp_path / "data.xlsx"
    weird.write_bytes(b"PK")
    with pytest.raises(SourceError, match="is not a format lmstack reads"):
        list(iter_documents(str(weird)))

import hashlib
import json
import os
import re

import numpy as np
import pytest
import torch

from metarec.artifacts import load_run, save_run
from metarec.types import IdMap, MetarecError


def _save(path, scale=1.0):
    return save_run(
        path,
        config={"model": {"hidden": 8}},
        tensors={"w": torch.arange(6.0).reshape(2, 3) * scale, "b": torch.ones(3)},
        ids={
            "users": IdMap(np.array(["u1", "u2"], dtype=object)),
            "items": IdMap(np.array(["7", "x"], dtype=object)),
        },
        meta={"encoder_fingerprint": "hash:abc"},
    )


def test_round_trip(tmp_path):
    run = load_run(_save(tmp_path / "run"))
    assert torch.equal(run.tensors["w"], torch.arange(6.0).reshape(2, 3))
    assert run.ids["users"].ids.tolist() == ["u1", "u2"]
    assert run.ids["items"].index("x") == 1
    assert run.config == {"model": {"hidden": 8}}
    assert run.meta["encoder_fingerprint"] == "hash:abc"
    assert not any(p.suffix in (".pkl", ".pickle", ".pt") for p in (tmp_path / "run").rglob("*"))


def test_overwrite_replaces_whole_run_and_leaves_no_temp(tmp_path):
    _save(tmp_path / "run")
    _save(tmp_path / "run", scale=2.0)
    assert torch.equal(load_run(tmp_path / "run").tensors["w"], torch.arange(6.0).reshape(2, 3) * 2)
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_corrupt_or_foreign_run_is_a_clear_error(tmp_path):
    path = _save(tmp_path / "run")
    (path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(MetarecError, match="checksum"):
        load_run(path)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["format_version"] = 999
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(MetarecError, match="format version 999"):
        load_run(path)
    with pytest.raises(MetarecError, match="not a metarec RUN"):
        load_run(tmp_path)


def _rehash(path):
    """Checksums recomputed: how a RUN written by a buggy or another version looks."""
    manifest = json.loads((path / "manifest.json").read_text())
    for rel in manifest["files"]:
        manifest["files"][rel] = hashlib.sha256((path / rel).read_bytes()).hexdigest()
    (path / "manifest.json").write_text(json.dumps(manifest))


MANIFEST = "manifest.json"


@pytest.mark.parametrize(
    "name, text, message",
    [
        (MANIFEST, "[1, 2]", "not a JSON object"),
        (MANIFEST, json.dumps({"format_version": 1}), "no file list"),
        (MANIFEST, json.dumps({"format_version": 1, "files": {}}), "config.json is not listed"),
        ("model.safetensors", "\x00" * 64, "model.safetensors is unreadable"),
        ("ids/items.parquet", "garbage", "ids/items.parquet is unreadable"),
        ("config.json", "not json", "config.json is unreadable"),
        ("meta.json", "[]", "meta.json is unreadable"),
    ],
)
def test_a_damaged_run_is_one_line_even_with_matching_checksums(tmp_path, name, text, message):
    path = _save(tmp_path / "run")
    (path / name).write_text(text)
    if name != MANIFEST:
        _rehash(path)
    with pytest.raises(MetarecError, match=message) as err:
        load_run(path)
    assert "\n" not in str(err.value)


def test_every_run_file_gets_the_same_public_mode(tmp_path):
    import os
    import stat

    path = _save(tmp_path / "run")
    modes = {
        p.relative_to(path).as_posix(): stat.S_IMODE(os.stat(p).st_mode)
        for p in path.rglob("*")
        if p.is_file()
    }
    assert len(set(modes.values())) == 1, modes  # model.safetensors was 0600


def test_a_swap_that_fails_between_its_renames_puts_the_previous_run_back(tmp_path, monkeypatch):
    # the old RUN was moved aside and the new one failed to move in (another writer's RUN
    # in the way, Ctrl-C): `run` was left missing, the old one stranded in .run.old.*
    import os

    from metarec import artifacts

    _save(tmp_path / "run")
    real = os.replace
    calls = []

    def flaky(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(src, dst)

    monkeypatch.setattr(artifacts.os, "replace", flaky)
    with pytest.raises(KeyboardInterrupt):
        _save(tmp_path / "run", scale=2.0)
    monkeypatch.setattr(artifacts.os, "replace", real)
    assert torch.equal(load_run(tmp_path / "run").tensors["w"], torch.arange(6.0).reshape(2, 3))
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


@pytest.mark.parametrize("after", [1, 2])
def test_an_interrupt_landing_just_after_a_rename_leaves_one_whole_run(
    tmp_path, monkeypatch, after
):
    # probe 137 (a signal injected at the rename syscall): a Ctrl-C arriving once the
    # first rename had moved the previous RUN aside left nothing at the path, the old RUN
    # in .run.old.*; once the second had moved the new one in, the put-back failed and the
    # previous RUN was stranded beside it
    from metarec import artifacts

    _save(tmp_path / "run")
    real = os.replace
    calls = []

    def interrupted_after(src, dst):
        calls.append(dst)
        real(src, dst)
        if len(calls) == after:
            raise KeyboardInterrupt

    monkeypatch.setattr(artifacts.os, "replace", interrupted_after)
    with pytest.raises(KeyboardInterrupt):
        _save(tmp_path / "run", scale=2.0)
    monkeypatch.setattr(artifacts.os, "replace", real)
    # after the first: the previous RUN back; after the second: the new one, whole
    scale = 1.0 if after == 1 else 2.0
    w = torch.arange(6.0).reshape(2, 3) * scale
    assert torch.equal(load_run(tmp_path / "run").tensors["w"], w)
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_a_run_stranded_by_a_kill_is_named_and_superseded_by_the_next_write(tmp_path):
    # kill -9 between the two renames: no RUN at the path, the previous one in .run.old.*
    _save(tmp_path / "run")
    stash = tmp_path / ".run.old.abc123"
    stash.mkdir()
    (tmp_path / "run").rename(stash / "run")
    with pytest.raises(MetarecError, match=r"run is missing: a write was interrupted .* is at"):
        load_run(tmp_path / "run")
    _save(tmp_path / "run", scale=3.0)  # a newer complete RUN: the stranded one is obsolete
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_the_loser_of_two_writers_gets_a_line_that_names_the_run(tmp_path, monkeypatch):
    # another writer's RUN landed between this writer's renames: the error named the
    # internal staging folder ("Directory not empty: .run.g63puilr")
    import os

    from metarec import artifacts

    _save(tmp_path / "run")
    real = os.replace
    calls = []

    def rival(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the rival's complete RUN lands first
            (tmp_path / "run").mkdir()
            (tmp_path / "run" / "manifest.json").write_text("{}")
        return real(src, dst)

    monkeypatch.setattr(artifacts.os, "replace", rival)
    with pytest.raises(MetarecError, match="another process wrote a RUN there"):
        _save(tmp_path / "run", scale=2.0)
    assert (tmp_path / "run" / "manifest.json").read_text() == "{}"


@pytest.mark.parametrize("rel", ["../outside.txt", "/etc/hostname", "ids/../../outside.txt"])
def test_a_manifest_cannot_reach_outside_its_run(tmp_path, rel):
    # a listed name outside the RUN was opened and hashed wherever it pointed
    path = _save(tmp_path / "run")
    (tmp_path / "outside.txt").write_text("x")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"][rel] = "0" * 64
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(MetarecError, match="outside the RUN"):
        load_run(path)


def test_a_run_holding_files_it_did_not_write_is_not_replaced(tmp_path):
    # a RUN is replaced whole: notes a user kept in it went with it, without a word
    path = _save(tmp_path / "run")
    (path / "my_notes.txt").write_text("keep me")
    with pytest.raises(MetarecError, match=r"holding 1 file\(s\) it did not write \(my_notes"):
        _save(tmp_path / "run", scale=2.0)
    assert (path / "my_notes.txt").read_text() == "keep me"
    assert torch.equal(load_run(path).tensors["w"], torch.arange(6.0).reshape(2, 3))
    (path / "my_notes.txt").unlink()
    _save(tmp_path / "run", scale=2.0)  # its own files only: replaced as before
    # a manifest whose file list is not a mapping is refused in one line (a TypeError)
    for files in (None, [{"a": 1}]):
        (path / "manifest.json").write_text(json.dumps({"format_version": 1, "files": files}))
        with pytest.raises(MetarecError, match="corrupt manifest .no file list.; refusing"):
            _save(tmp_path / "run")


def test_only_listed_id_maps_are_read(tmp_path):
    # every ids/*.parquet was read, listed or not: an unlisted items map with its ids
    # reversed sent every score to the wrong item, and an extra map was read too
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = _save(tmp_path / "run")
    manifest = json.loads((path / "manifest.json").read_text())
    del manifest["files"]["ids/items.parquet"]
    (path / "manifest.json").write_text(json.dumps(manifest))
    pq.write_table(pa.table({"id": ["x", "7"]}), path / "ids" / "items.parquet")
    with pytest.raises(MetarecError, match=r"ids/items\.parquet is not listed"):
        load_run(path)
    path = _save(tmp_path / "run2")
    pq.write_table(pa.table({"id": ["a"]}), path / "ids" / "extra.parquet")
    with pytest.raises(MetarecError, match=r"ids/extra\.parquet is not listed"):
        load_run(path)


def test_a_run_of_symlinks_loads(tmp_path):
    # git-annex, DVC and cp -rs store a RUN as links to files elsewhere: the manifest's
    # names are checked as written, so links pointing outside are fine
    path = _save(tmp_path / "store" / "run")
    linked = tmp_path / "linked"
    (linked / "ids").mkdir(parents=True)
    for f in path.rglob("*"):
        if f.is_file():
            (linked / f.relative_to(path)).symlink_to(f)
    run = load_run(linked)
    assert torch.equal(run.tensors["w"], torch.arange(6.0).reshape(2, 3))


def test_staging_left_by_a_killed_writer_is_swept_by_the_next_write(tmp_path):
    # kill -9 mid-write left .RUN.XXXX folders (and .P.csv.XXXX.tmp files) forever; the
    # names now carry host and pid, and a write of the same target removes those whose
    # process is gone, never a live one's or another host's
    import subprocess
    import sys

    from metarec.atomic import _HOST, staging_prefix, write_text

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = tmp_path / f".run.~{_HOST}-{dead.pid}~abc"
    (left / "ids").mkdir(parents=True)
    (left / "model.safetensors").write_bytes(b"x" * 100)
    live = tmp_path / f".run.~{_HOST}-{os.getppid()}~def"
    live.mkdir()
    other = tmp_path / f".run.~elsewhere-{dead.pid}~ghi"
    other.mkdir()
    _save(tmp_path / "run")
    assert not left.exists() and live.is_dir() and other.is_dir()
    assert load_run(tmp_path / "run").meta["encoder_fingerprint"] == "hash:abc"
    # files: atomic_path's temporaries
    stale = tmp_path / f".P.csv.~{_HOST}-{dead.pid}~x.tmp"
    stale.write_text("half")
    write_text(tmp_path / "P.csv", "a,b\n")
    assert not stale.exists() and (tmp_path / "P.csv").read_text() == "a,b\n"
    assert staging_prefix("P.csv") == f".P.csv.~{_HOST}-{os.getpid()}~"


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs Linux's /proc")
def test_a_staging_folder_that_cannot_be_made_is_named_after_its_target():
    # the CLI printed the staging folder's own name ("/proc/.x.~vm-11720~f6hpmia2")
    from metarec.atomic import staging_dir

    with pytest.raises(MetarecError, match=r"^cannot write x in /proc: "):
        staging_dir("/proc", "x")


def test_replace_dir_leaves_no_aside_folder_when_the_target_cannot_move(tmp_path, monkeypatch):
    # the first rename (the old folder aside) failing, as for an immutable folder or a
    # mount point, left an empty ".X.old.*" behind for good
    import os

    from metarec.atomic import replace_dir

    new, out = tmp_path / "new", tmp_path / "out"
    new.mkdir()
    out.mkdir()
    (out / "f").write_text("old")
    real = os.replace

    def refuse(src, dst):
        if str(src) == str(out):
            raise PermissionError(1, "Operation not permitted")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(PermissionError):
        replace_dir(new, out, ".old.", "run")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "out"]
    assert (out / "f").read_text() == "old"


def test_a_format_version_spelled_as_text_says_so(tmp_path):

    from metarec.artifacts import load_run

    for spelled, said in (('"1"', "'1' (a str"), ("1.0", "1.0 (a float"), ("true", "True (a bool")):
        (tmp_path / "manifest.json").write_text(f'{{"format_version": {spelled}, "files": {{}}}}')
        with pytest.raises(MetarecError, match=re.escape(f"version {said}, not the integer)")):
            load_run(tmp_path)


def test_a_run_out_of_dot_is_refused_before_the_work_and_its_full_path_taken(tmp_path, monkeypatch):
    # "." cannot be renamed (EBUSY), found only after the training; the same folder by
    # its full path can be, and was wrongly refused for a while
    from metarec.artifacts import check_run_target

    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    for out in (".", "./", ".."):
        with pytest.raises(MetarecError, match="a . or .. path"):
            check_run_target(out)
    assert check_run_target(str(here)) == here


def _save_other(path):
    # another RUN of the same shapes and counts: its files fit this one's, so only the
    # RUN id tells them apart
    return save_run(
        path,
        config={"model": {"hidden": 9}},
        tensors={"w": torch.arange(6.0).reshape(2, 3) + 1, "b": torch.ones(3)},
        ids={
            "users": IdMap(np.array(["u1", "u2"], dtype=object)),
            "items": IdMap(np.array(["x", "7"], dtype=object)),  # the same ids, reversed
        },
        meta={"encoder_fingerprint": "hash:abc"},
    )


def test_every_file_carries_the_run_id_and_a_rerun_writes_the_same_bytes(tmp_path):
    import pyarrow.parquet as pq
    from safetensors import safe_open

    a, b = _save(tmp_path / "a"), _save(tmp_path / "b")
    run = load_run(a)
    manifest = json.loads((a / "manifest.json").read_text())
    assert run.run_id == manifest["run_id"] and len(run.run_id) == 32
    # config.json is tied by its digest in meta.json, not a key of its own: an older
    # metarec refused a config.json with a key it did not know (review 138)
    assert "run_id" not in json.loads((a / "config.json").read_text())
    meta = json.loads((a / "meta.json").read_text())
    assert meta["run_id"] == run.run_id
    assert meta["config_sha256"] == hashlib.sha256((a / "config.json").read_bytes()).hexdigest()
    assert run.config == {"model": {"hidden": 8}}  # read back as saved
    assert "run_id" not in run.meta and "config_sha256" not in run.meta
    with safe_open(str(a / "model.safetensors"), framework="pt") as fh:
        assert fh.metadata()["run_id"] == run.run_id
    for f in (a / "ids").glob("*.parquet"):
        assert pq.read_schema(f).metadata[b"run_id"].decode() == run.run_id
    # the id is a digest of the contents: the same RUN written twice is the same bytes,
    # and a RUN that differs anywhere has another id
    for f in a.rglob("*"):
        if f.is_file():
            assert f.read_bytes() == (b / f.relative_to(a)).read_bytes(), f
    assert load_run(_save_other(tmp_path / "c")).run_id != run.run_id
    assert load_run(_save(tmp_path / "d", scale=2.0)).run_id != run.run_id


@pytest.mark.parametrize(
    "rel", ["ids/items.parquet", "model.safetensors", "config.json", "meta.json"]
)
def test_a_file_from_another_run_is_refused_even_with_its_checksum_copied(tmp_path, rel):
    # probe 130: the id maps of another RUN of the same size, copied in with their manifest
    # line, loaded and scored every item as another
    path, other = _save(tmp_path / "run"), _save_other(tmp_path / "other")
    (path / rel).write_bytes((other / rel).read_bytes())
    _rehash(path)
    with pytest.raises(MetarecError, match=f"{re.escape(rel)} belongs to another RUN") as err:
        load_run(path)
    assert "\n" not in str(err.value)


def test_a_run_written_before_files_carried_an_id_still_loads(tmp_path):
    import pyarrow.parquet as pq
    from safetensors.torch import load_file, save_file

    path = _save(tmp_path / "run")
    for rel, keys in (("meta.json", ("run_id", "config_sha256")), ("manifest.json", ("run_id",))):
        doc = json.loads((path / rel).read_text())
        for key in keys:
            del doc[key]
        (path / rel).write_text(json.dumps(doc))
    save_file(load_file(str(path / "model.safetensors")), str(path / "model.safetensors"))
    for f in (path / "ids").glob("*.parquet"):
        pq.write_table(pq.read_table(f).replace_schema_metadata(None), f)
    _rehash(path)
    run = load_run(path)
    assert run.run_id is None and run.ids["items"].index("x") == 1
    # ...but one such file inside a RUN that has an id is not from this RUN
    fresh = _save(tmp_path / "fresh")
    (fresh / "meta.json").write_bytes((path / "meta.json").read_bytes())
    _rehash(fresh)
    with pytest.raises(MetarecError, match="meta.json belongs to another RUN"):
        load_run(fresh)


def test_save_run_refuses_a_document_holding_the_run_id_key(tmp_path):
    with pytest.raises(ValueError, match="run_id"):
        save_run(tmp_path / "run", config={"run_id": "x"}, tensors={}, ids={}, meta={})
    with pytest.raises(ValueError, match="config_sha256"):
        save_run(tmp_path / "run", config={}, tensors={}, ids={}, meta={"config_sha256": "x"})
    assert not (tmp_path / "run").exists()


def test_a_run_loads_in_a_reader_that_refuses_unknown_config_keys(tmp_path):
    # review 138: config.json held "run_id", and the metarec before refused the RUN as
    # "from another version" (its config is read strictly); every other file's id sits
    # where an older reader does not look
    path = _save(tmp_path / "run")
    assert json.loads((path / "config.json").read_text()) == {"model": {"hidden": 8}}


# --- concurrent writers and readers (probe 145) -----------------------------------------


def test_a_run_replaced_while_it_is_read_is_read_again(tmp_path, monkeypatch):
    """fit swaps a RUN in by two renames; a reader between its manifest and its files
    checked the new RUN's files against the old manifest and called a whole RUN damaged
    ("belongs to another RUN ... re-run metarec fit")."""
    from metarec import artifacts
    from metarec.atomic import replace_dir

    run = tmp_path / "RUN"
    _save(run)
    staged = _save_other(tmp_path / "next")
    real, swapped = artifacts._sha256, []

    def swap_then_hash(path):
        if not swapped:  # the first file read: another process's RUN moves in now
            swapped.append(True)
            replace_dir(staged, run, ".old.", "run")
        return real(path)

    monkeypatch.setattr(artifacts, "_sha256", swap_then_hash)
    got = load_run(run)
    assert swapped and got.config == {"model": {"hidden": 9}}  # the new RUN, whole
    # a RUN damaged in place (the same folder throughout) is still said to be damaged
    (run / "config.json").write_text('{"model": {"hidden": 10}}')
    with pytest.raises(MetarecError, match="checksum"):
        load_run(run)


def test_a_run_target_swapped_during_its_check_is_judged_again(tmp_path, monkeypatch):
    # the folder renamed aside between listing it and reading its manifest read as "a
    # non-empty folder that is not a metarec RUN", or a FileNotFoundError traceback
    from metarec import artifacts

    run = tmp_path / "RUN"
    _save(run)
    real, calls = artifacts.is_run, []

    def moved_away(folder):
        if folder == run and not calls:
            calls.append(True)
            os.rename(run, tmp_path / "aside")  # another writer's first rename
        return real(folder)

    monkeypatch.setattr(artifacts, "is_run", moved_away)
    assert artifacts.check_run_target(run) == run and calls


def test_the_loser_of_two_run_writers_leaves_nothing_aside(tmp_path, monkeypatch):
    # the other writer's RUN moved in between this one's two renames: an empty
    # ".RUN.old.XXXX" was left behind each time
    from metarec import atomic

    run = tmp_path / "RUN"
    _save(run)
    real = os.replace

    def other_writer_first(src, dst):
        if str(dst) == str(run) and not os.path.lexists(run):
            real(_save_other(tmp_path / "theirs"), run)  # theirs lands first
        return real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", other_writer_first)
    with pytest.raises(MetarecError, match="another process wrote a RUN there"):
        _save(run, scale=3.0)
    monkeypatch.undo()
    assert load_run(run).config == {"model": {"hidden": 9}}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["RUN"]


def test_replace_dir_without_replace_keeps_what_another_process_put_there(tmp_path):
    from metarec.atomic import replace_dir

    new, out = tmp_path / "new", tmp_path / "out"
    new.mkdir()
    (new / "f").write_text("mine")
    out.mkdir()  # an empty folder is taken, as when it was checked
    replace_dir(new, out, ".old-", "out", replace=False)
    assert (out / "f").read_text() == "mine"
    new.mkdir()
    (new / "f").write_text("late")
    with pytest.raises(OSError):
        replace_dir(new, out, ".old-", "out", replace=False)
    assert (out / "f").read_text() == "mine" and (new / "f").read_text() == "late"


def test_replace_dir_takes_the_place_of_a_folder_moved_or_made_meanwhile(tmp_path, monkeypatch):
    from metarec import atomic
    from metarec.atomic import replace_dir

    def fresh(text):
        new = tmp_path / "new"
        new.mkdir()
        (new / "f").write_text(text)
        return new

    out = tmp_path / "out"
    real_rename, real_replace = os.rename, os.replace

    # absent when looked at, made by another writer before the rename: set aside, replaced
    def made_first(src, dst):
        if str(dst) == str(out) and not out.exists():
            out.mkdir()
            (out / "f").write_text("theirs")
        return real_rename(src, dst)

    monkeypatch.setattr(atomic.os, "rename", made_first)
    replace_dir(fresh("mine"), out, ".old.", "run")
    assert (out / "f").read_text() == "mine"
    monkeypatch.undo()

    # there when looked at, moved away by another writer before the first rename
    def moved_first(src, dst):
        if str(src) == str(out) and out.exists():
            real_rename(out, tmp_path / "gone")
        return real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", moved_first)
    replace_dir(fresh("again"), out, ".old.", "run")
    monkeypatch.undo()
    assert (out / "f").read_text() == "again"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gone", "out"]


def test_a_folder_made_where_a_new_run_goes_is_not_deleted_by_the_write(tmp_path, monkeypatch):
    # the swap set aside and deleted whatever another process put at a path that was
    # free when checked, a folder of notes included (review 148)
    from metarec import artifacts

    run = tmp_path / "RUN"
    real = artifacts.staging_dir

    def then_someone_writes_there(parent, name):
        run.mkdir()
        (run / "notes.txt").write_text("mine")
        return real(parent, name)

    monkeypatch.setattr(artifacts, "staging_dir", then_someone_writes_there)
    with pytest.raises(MetarecError, match="another process wrote"):
        _save(run)
    assert os.listdir(run) == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["RUN"]

"""The readers behind every user file: one DistillError line naming the file, never a traceback.

The CLI cases, one per kind of file, are in tests/test_errors.py.
"""

import pytest

from distill_cli.errors import DistillError
from distill_cli.user_files import first_line, read_json, read_text, read_yaml, reading

FIX = "do the fix"


def error(fn, *args, **kwargs) -> str:
    with pytest.raises(DistillError) as e:
        fn(*args, **kwargs)
    message = str(e.value)
    assert "\n" not in message and message.endswith(f"; {FIX}"), message
    return message


def test_read_json_names_the_file_and_where(tmp_path):
    path = tmp_path / "m.json"
    path.write_text('{\n  "a": 1,\n  "b": \n}')
    assert error(read_json, path, "map", FIX) == (
        f"map {path} is not valid JSON (line 4 column 1: Expecting value); {FIX}"
    )


def test_read_json_shapes(tmp_path):
    path = tmp_path / "m.json"
    path.write_text('{"ids": [1, 2], "size": 3, "share": 1, "flag": true}')
    data = read_json(path, "map", FIX, required={"ids": list, "size": int}, optional={"x": str})
    assert data["ids"] == [1, 2]
    read_json(path, "map", FIX, optional={"share": float})  # an int is a number
    assert "'flag' must be an integer, not bool" in error(
        read_json, path, "map", FIX, optional={"flag": int}
    )
    assert f"map {path} has no 'gone'" in error(read_json, path, "map", FIX, required={"gone": int})
    assert "'size' must be a list or null, not int" in error(
        read_json, path, "map", FIX, optional={"size": (list, type(None))}
    )
    path.write_text("[1, 2]")
    assert "must hold a JSON object, not list" in error(read_json, path, "map", FIX)


def test_read_text_not_utf8_or_missing(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(b"ok\n\xff")
    assert error(read_text, path, "text", FIX) == (
        f"could not read text {path}: it is not UTF-8 text (byte 3); {FIX}"
    )
    missing = tmp_path / "gone.txt"
    assert "no such file or directory" in error(read_text, missing, "text", FIX)
    assert "is a directory" in error(read_text, tmp_path, "text", FIX)


def test_read_yaml(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("")
    assert read_yaml(path, "recipe", FIX) == {}
    path.write_text("precision: no\nflag: true\n")  # YAML 1.2 booleans only
    assert read_yaml(path, "recipe", FIX) == {"precision": "no", "flag": True}
    path.write_text("a: [1,\nb: 2\n")
    assert "not valid YAML at line" in error(read_yaml, path, "recipe", FIX)
    path.write_text("x: !!python/object/apply:os.system ['true']\n")
    assert "could not determine a constructor" in error(read_yaml, path, "recipe", FIX)
    path.write_text("- a\n")
    assert "must hold a YAML mapping of keys, not list" in error(read_yaml, path, "recipe", FIX)


def test_reading_turns_library_errors_into_one_line(tmp_path):
    path = tmp_path / "data.bin"
    with pytest.raises(DistillError, match=r"could not read data .*data.bin: bad header; do"):
        with reading(path, "data", FIX):
            raise ValueError("bad header.\nmore detail")
    with pytest.raises(DistillError, match=r"no such file or directory: .*other"):
        with reading(path, "data", FIX):
            raise FileNotFoundError(2, "No such file or directory", str(tmp_path / "other"))
    with pytest.raises(KeyError):  # not in `errors`: a bug, left alone
        with reading(path, "data", FIX, errors=(ValueError,)):
            raise KeyError("k")


def test_first_line():
    assert first_line(KeyError("added_tokens")) == "no key 'added_tokens'"
    assert first_line(ValueError("")) == "ValueError"
    long = "Short first part. " + "x" * 300
    assert first_line(RuntimeError(long)) == "Short first part"
    assert first_line(RuntimeError("Unrecognized model in /x. Set model_type.")) == (
        "Unrecognized model in /x. Set model_type"
    )

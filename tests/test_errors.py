"""Errors in one place: every public exception of stackbook lives in ``core.errors``, under one root.

The modules are imported for real (``pkgutil.walk_packages``) and their classes inspected, so a
new exception class defined anywhere else, a second class of an existing name, or an exit code
the README does not document fails here.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest

import stackbook
from stackbook.core import errors
from tests.conftest import ledger_count, nb

README = Path(__file__).resolve().parents[1] / "README.md"


def _modules():
    yield stackbook
    for info in pkgutil.walk_packages(stackbook.__path__, "stackbook."):
        yield importlib.import_module(info.name)


def _exception_classes() -> dict[str, list[type]]:
    """Every exception class defined in a stackbook module, by qualified name of where it is defined."""
    found: dict[str, type] = {}
    for module in _modules():
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__.startswith("stackbook"):
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return found


def test_the_walk_sees_the_whole_package():
    names = {m.__name__ for m in _modules()}
    assert {"stackbook.cli.run", "stackbook.ingest.loader", "stackbook.k8s.apply", "stackbook.dr.drill"} <= names
    assert len(names) > 60


def test_every_public_exception_is_a_stackbook_error_defined_in_core_errors():
    classes = _exception_classes()
    public = {where: cls for where, cls in classes.items() if not cls.__name__.startswith("_")}
    elsewhere = sorted(where for where, cls in public.items() if cls.__module__ != "stackbook.core.errors")
    assert elsewhere == [], f"define these in stackbook/core/errors.py: {elsewhere}"
    not_rooted = sorted(where for where, cls in public.items() if not issubclass(cls, errors.StackbookError))
    assert not_rooted == [], f"not subclasses of StackbookError: {not_rooted}"
    assert len(public) >= 30  # the walk found the classes re-exported all over the package


def test_exception_names_are_unique_across_the_package():
    names: dict[str, list[str]] = {}
    for where, cls in _exception_classes().items():
        names.setdefault(cls.__name__, []).append(where)
    twice = {name: wheres for name, wheres in names.items() if len(wheres) > 1}
    assert twice == {}


def test_every_error_has_a_docstring_and_a_documented_exit_code():
    documented = {int(c) for c in re.findall(r"^\| (\d+) \|", README.read_text(), flags=re.M)} | {141}
    assert set(errors.EXIT_CODES) == documented == {0, 1, 2, 3, errors.EXIT_WAITING, 130, 141}
    for cls in _exception_classes().values():
        if issubclass(cls, errors.StackbookError):
            assert cls.exit_code in errors.EXIT_CODES, cls
            assert (cls.__doc__ or "").strip(), f"{cls.__name__} has no docstring saying what it means"


def test_the_old_import_paths_keep_working():
    from stackbook.book import BookError, BookUsageError
    from stackbook.dr import drill
    from stackbook.ingest import FileError, LoadError, SourceError, TooManyBadRows
    from stackbook.ingest.csvfile import EncodingNotSupported
    from stackbook.ingest.infer import SpecError
    from stackbook.k8s import KubernetesError, ManifestError
    from stackbook.pipelines.spec import PipelineSpecError
    from stackbook.provision import warehouse
    from stackbook.schedules import ScheduleError
    from stackbook.train import model
    from stackbook.transform import dbt

    assert drill.DrError is errors.DrError and drill.DrRefused is errors.DrRefused
    assert warehouse.ProvisionError is errors.ProvisionError and model.TrainingError is errors.TrainingError
    assert dbt.DbtBuildFailed is errors.DbtBuildFailed
    for cls in (BookError, BookUsageError, FileError, LoadError, SourceError, TooManyBadRows, EncodingNotSupported,
                SpecError, KubernetesError, ManifestError, PipelineSpecError, ScheduleError):
        assert getattr(errors, cls.__name__) is cls


def test_the_exit_code_follows_the_kind_of_failure():
    assert errors.ManifestError("x").exit_code == 2  # bad input: nothing was done
    assert errors.KubernetesError("x").exit_code == 1
    assert errors.DrRefused("x").exit_code == 3
    assert not hasattr(errors, "RunFailed")


# --------------------------------------------------------------- files that are not text or not YAML

LATIN1 = "name: Caf\xe9\n".encode("latin-1")  # not UTF-8: byte 9 is 0xe9


def _loaders(tmp_path):
    """(call, error class, what the message names) for each YAML file stackbook reads."""
    from stackbook.core import params
    from stackbook.ingest import infer
    from stackbook.k8s import render
    from stackbook.pipelines import spec

    pipeline = tmp_path / "p" / "pipeline.yaml"
    pipeline.parent.mkdir()
    return [
        (lambda p: params.load_file(p), errors.ParameterError, "parameters file", tmp_path / "params.yaml"),
        (lambda p: infer.load_spec(p), errors.SpecError, "spec file", tmp_path / "spec.yaml"),
        (lambda p: render.load_yaml_documents(p), errors.ManifestError, "manifest file", tmp_path / "m.yaml"),
        (lambda p: spec.load_spec(str(p)), errors.PipelineSpecError, "pipeline file", pipeline),
    ]


def test_a_yaml_file_that_is_not_text_is_a_one_line_error_naming_it(tmp_path):
    for load, error, what, path in _loaders(tmp_path):
        path.write_bytes(LATIN1)
        with pytest.raises(error) as caught:
            load(path)
        message = str(caught.value)
        assert message == f"{what} {path} is not UTF-8 text (byte 9): save it as text", message
        assert caught.value.exit_code == 2


def test_a_yaml_file_that_is_not_yaml_names_the_file(tmp_path):
    for load, error, what, path in _loaders(tmp_path):
        path.write_text("a: [1, 2\n", encoding="utf-8")
        with pytest.raises(error, match=rf"^{what} {re.escape(str(path))} is not valid YAML: "):
            load(path)


def test_a_params_file_of_bad_bytes_exits_2_and_runs_nothing(cli, db, tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_bytes(LATIN1)
    before = ledger_count(db, "typed")
    res = cli("run", nb("typed"), "-f", str(bad))
    assert res.code == 2, res
    assert res.err == f"stackbook: error: parameters file {bad} is not UTF-8 text (byte 9): save it as text\n"
    assert ledger_count(db, "typed") == before  # nothing was executed

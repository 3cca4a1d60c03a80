"""Safety properties read from the source (AST) and from a live sweep.

- No pickle is ever loaded from disk: no `pickle.load(s)`, `Unpickler` without a `find_class`
  that refuses globals, `torch.load` only with `weights_only=True`, `np.load` only with
  `allow_pickle=False`, none of the other code-running deserialisers.
- SQL is built only with parameters: every SQL string handed to SQLite is a constant, a
  module-level constant, or one of the reviewed builders listed in `REVIEWED_SQL_BUILDERS`
  (identifiers taken from the code's own constants; values still travel as `?` parameters).
  A new builder fails this test until someone reviews it and adds it, with its reason.
- Nothing listens on a network port while a sweep runs.
"""

from __future__ import annotations

import ast
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.faults.conftest import Sweep, rows
from tests.waiting import wait_for

PACKAGE = REPO / "scaletui"
SQL_CALLS = {"execute", "executemany", "executescript", "query", "_rows", "_tuples", "_typed"}
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "joblib", "shelve", "marshal", "cloudpickle"}

# (module, function, interpolated expression): why it is safe. Everything else must be constant.
REVIEWED_SQL_BUILDERS: dict[tuple[str, str, str], str] = {
    ("store/writer.py", "_update_run", "sets"):
        "quoted column names from the keys of dicts literal in writer.py; values are parameters",
    ("store/writer.py", "_insert_run", "columns"): "quoted keys of the row dict built in the same function",
    ("store/writer.py", "_insert_run", "marks"): "one `?` per column",
    ("store/writer.py", "_insert_own_run", "columns"):
        "quoted keys of _own_row's literal dict, whose hyperparameter keys are checked against HYPERPARAMETERS",
    ("store/writer.py", "_insert_own_run", "marks"): "one `?` per column",
    ("store/reader.py", "export_rows", "query"):
        "a constant SELECT of _EXPORT_SQL with column names from the schema (pragma_table_info), a constant"
        " WHERE and ORDER BY; the experiment is a `?`",
    ("store/fits.py", "insert_fit", "columns"): "quoted keys of fit_row's literal dict",
    ("store/fits.py", "insert_fit", "marks"): "one `?` per column",
    ("store/reader.py", "alerts", "sql"): "optional WHERE clauses joined from constant strings; values are `?`",
    ("store/reader.py", "fits", "sql"): "optional WHERE clauses joined from constant strings; values are `?`",
    ("store/reader.py", "read", "sql"): "the inner reader of `_typed` and `final_losses`, executing their `sql`",
    ("store/reader.py", "final_losses", "sql"): "a constant SELECT plus an optional constant WHERE; values are `?`",
    ("store/predictions.py", "insert_prediction", "columns"): "quoted keys of the row dict literal in the function",
    ("store/predictions.py", "insert_prediction", "marks"): "one `?` per column",
    ("store/reader.py", "predictions", "sql"):
        "optional WHERE clauses joined from constant strings (one `?` per run id); values are `?`",
    ("store/reader.py", "events_since", "_EVENTS + ' ORDER BY id LIMIT ?'"): "two module constants; values are `?`",
    ("store/reader.py", "events_since", "_EVENTS + ' AND run_id = ? ORDER BY id LIMIT ?'"):
        "two module constants; values are `?`",
}


def modules() -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        yield str(path.relative_to(PACKAGE)), ast.parse(path.read_text(encoding="utf-8"), str(path))


def calls(tree: ast.AST) -> Iterator[ast.Call]:
    yield from (node for node in ast.walk(tree) if isinstance(node, ast.Call))


def dotted(node: ast.expr) -> str:
    """`torch.load` for torch.load(...), `load` for a bare load(...)."""
    return ast.unparse(node)


def keyword_is(call: ast.Call, name: str, value: object) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is value
               for k in call.keywords)


# --------------------------------------------------------------------------- no pickle from disk


def unsafe_loads(module: str, tree: ast.Module) -> list[str]:
    found = []
    for call in calls(tree):
        name = dotted(call.func)
        where = f"{module}:{call.lineno} {name}"
        if name in ("torch.load", "torch.serialization.load") and not keyword_is(call, "weights_only", True):
            found.append(where + " without weights_only=True")
        if name in ("np.load", "numpy.load") and not keyword_is(call, "allow_pickle", False):
            found.append(where + " without allow_pickle=False")
        if re.fullmatch(r"(c?[pP]ickle|_pickle|dill|joblib|marshal|cloudpickle)\.loads?|shelve\.open|yaml\.load",
                        name):
            found.append(where)
        if name in ("pickle.Unpickler", "Unpickler"):
            found.append(where + " (an Unpickler without a find_class that refuses globals)")
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and any(dotted(b).endswith("Unpickler") for b in node.bases):
            methods = {f.name for f in node.body if isinstance(f, ast.FunctionDef)}
            if "find_class" not in methods:
                found.append(f"{module}:{node.lineno} {node.name} subclasses Unpickler without find_class")
    return found


def test_no_pickle_is_loaded_from_disk() -> None:
    assert [hit for module, tree in modules() for hit in unsafe_loads(module, tree)] == []


def test_the_pickle_check_catches_what_it_should() -> None:
    bad = ast.parse("import torch, pickle, numpy as np\ntorch.load(p)\nnp.load(p, allow_pickle=True)\n"
                    "pickle.loads(b)\nclass U(pickle.Unpickler):\n    pass\n")
    assert len(unsafe_loads("bad.py", bad)) == 4


# --------------------------------------------------------------------------- SQL with parameters only


def module_constants(tree: ast.Module) -> set[str]:
    """Names bound or imported at module level in UPPER_CASE (with or without a leading underscore)."""
    names = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            names |= {a.asname or a.name for a in node.names if (a.asname or a.name).lstrip("_").isupper()}
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, ast.AnnAssign) else []
        names |= {t.id for t in targets if isinstance(t, ast.Name) and t.id.lstrip("_").isupper()}
    return names


def constant_loop_names(function: ast.AST, constants: set[str]) -> set[str]:
    """Loop variables that walk a module constant (`for s in _V1`, `VIEWS.items()`) or a literal tuple."""
    names: set[str] = set()
    for node in ast.walk(function):
        if not isinstance(node, ast.For):
            continue
        source = node.iter
        if isinstance(source, ast.Call) and isinstance(source.func, ast.Attribute):  # CONSTANT.items()
            source = source.func.value
        literal = isinstance(source, (ast.Tuple, ast.List)) and all(isinstance(e, ast.Constant) for e in source.elts)
        if literal or (isinstance(source, ast.Name) and source.id in constants):
            names |= {n.id for n in ast.walk(node.target) if isinstance(n, ast.Name)}
    return names


def dynamic_parts(sql: ast.expr, safe_names: set[str]) -> list[str]:
    """The parts of an SQL expression that are not constant text (empty: fully constant)."""
    if isinstance(sql, ast.Constant) and isinstance(sql.value, str):
        return []
    if isinstance(sql, ast.Name):
        return [] if sql.id in safe_names else [sql.id]
    if isinstance(sql, ast.JoinedStr):
        parts = []
        for value in (v.value for v in sql.values if isinstance(v, ast.FormattedValue)):
            is_int_of_constant = (isinstance(value, ast.Call) and dotted(value.func) == "int"
                                  and all(isinstance(a, ast.Name) and a.id in safe_names for a in value.args))
            if not is_int_of_constant:
                parts += dynamic_parts(value, safe_names)
        return parts
    return [ast.unparse(sql)]  # concatenation, %, .format(), calls: never


def functions(tree: ast.Module) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def sql_builders(module: str, tree: ast.Module) -> set[tuple[str, str, str]]:
    """(module, function, expression) for every non-constant part of SQL handed to SQLite."""
    constants = module_constants(tree)
    found = set()
    for function in functions(tree):
        safe = constants | constant_loop_names(function, constants)
        if function.name in SQL_CALLS:  # a wrapper: its callers' SQL is checked where they call it
            safe |= {a.arg for a in function.args.args}
        for call in calls(function):
            if not (isinstance(call.func, ast.Attribute) and call.func.attr in SQL_CALLS | {"create_view"}):
                continue
            index = 1 if call.func.attr == "create_view" else 0
            if len(call.args) > index:
                found |= {(module, function.name, part) for part in dynamic_parts(call.args[index], safe)}
    return found


def speaks_sql(module: str) -> bool:
    """tui/ never speaks SQL (it reads through store.Reader), and Textual's DOM `query()` would look like it."""
    return not module.startswith("tui/")


def test_sql_is_built_only_from_constants_and_reviewed_builders() -> None:
    found = {hit for module, tree in modules() if speaks_sql(module) for hit in sql_builders(module, tree)}
    unreviewed = found - set(REVIEWED_SQL_BUILDERS)
    assert not unreviewed, f"SQL built from non-constant text; use parameters or review it: {sorted(unreviewed)}"
    assert not set(REVIEWED_SQL_BUILDERS) - found, "a reviewed builder no longer exists: drop it from the list"


def test_the_sql_check_catches_what_it_should() -> None:
    bad = ast.parse("TABLE = 'runs'\ndef f(db, name, rows):\n"
                    "    db.execute(f\"SELECT * FROM runs WHERE name = '{name}'\")\n"
                    "    db.execute('SELECT * FROM runs WHERE name = ' + name)\n"
                    "    db.execute('SELECT %s' % name)\n"
                    "    db.execute(f'SELECT * FROM {TABLE}')\n"
                    "    for t in ('a', 'b'):\n        db.execute(f'DELETE FROM {t}')\n")
    assert {part for _, _, part in sql_builders("bad.py", bad)} == {
        "name", "'SELECT * FROM runs WHERE name = ' + name", "'SELECT %s' % name"}


# --------------------------------------------------------------------------- no listening sockets


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass  # the process ended while we looked
    return inodes


def listening_inodes() -> set[str]:
    """Inodes of TCP sockets in LISTEN state and of every bound UDP socket, IPv4 and IPv6."""
    inodes = set()
    for table in ("tcp", "tcp6", "udp", "udp6"):
        path = Path("/proc/net") / table
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            if table.startswith("udp") or fields[3] == "0A":  # 0A = TCP_LISTEN
                inodes.add(fields[9])
    return inodes


def listeners(pids: set[int]) -> set[tuple[int, str]]:
    listening = listening_inodes()
    return {(pid, inode) for pid in pids for inode in socket_inodes(pid) & listening}


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc")
def test_the_listener_check_sees_a_listening_socket() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert listeners({os.getpid()})


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc")
def test_a_running_sweep_listens_on_no_port(fault_sweep: Callable[..., Sweep], reap_sessions: list) -> None:
    sweep = fault_sweep(train={"steps": 200}, experiment={"workers": 2})  # the runner and two workers listen on nothing
    proc = sweep.start()
    reap_sessions.append(proc)

    def workers() -> set[int]:
        try:
            return {pid for (pid,) in rows(sweep.db, "SELECT pid FROM runs WHERE status = 'running'")}
        except Exception:
            return set()

    seen: set[int] = set()
    found: set[tuple[int, str]] = set()
    wait_for(workers, what="workers to start training")
    while proc.poll() is None:
        pids = {proc.pid} | workers()
        seen |= pids
        found |= listeners(pids)
        time.sleep(0.05)
    proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert len(seen) >= 3  # the runner and both workers were looked at
    assert found == set()

"""Does a chapter follow the exercise conventions its workbook relies on? (CONTRIBUTING.md, *Exercises*)

A workbook (``tools/workbooks.py``) drops every solution from the learner's cell and keeps the rest
of the chapter as it is. That only works when

- a ``setup_notebook(...)`` call comes before the first exercise (the workbook adds ``workbook=True``);
- each solution cell has balanced ``BEGIN/END SOLUTION`` markers and is followed directly by its test cell;
- a value exercise starts with its natural line (``rank_of_A = None``) before the markers, so that the
  name the check reads exists in the workbook;
- no later cell uses a name that an exercise cell sets: neither one only the solution defines (gone in a
  workbook), nor one set outside the markers (``d, r = 4096, 8``), which is the learner's to edit there.

:func:`problems` lists every violation as one sentence naming the cell; ``python tools/workbooks.py
--check`` prints them, and ``tests/test_workbooks.py`` fails with them. What the conventions say about
checks (unanswered forms end in ``NotAnswered``) needs a kernel: the workbook test runs that part.

The name analysis (:func:`cell_names`) is static and deliberately simple: a cell *reads* a name when it
loads it from the notebook's globals before binding it itself; a function body's reads count unless the
cell binds that name somewhere.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field

SOLUTION = ("BEGIN SOLUTION", "END SOLUTION")  # nbgrader's delimiters (matched inside a line, as nbgrader does)
HIDDEN_TESTS = ("BEGIN HIDDEN TESTS", "END HIDDEN TESTS")
SETUP_CALL = re.compile(r"\bsetup_notebook\(([^()]*)\)")
STARTING_LINE = re.compile(r"^([A-Za-z_]\w*)\s*=\s*None\s*(#.*)?$")


def nbgrader(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def is_solution(cell) -> bool:
    return cell.get("cell_type") == "code" and bool(nbgrader(cell).get("solution"))


def is_test(cell) -> bool:
    return cell.get("cell_type") == "code" and bool(nbgrader(cell).get("grade")) and not nbgrader(cell).get("solution")


def replace_regions(source: str, markers: tuple[str, str], replace) -> str:
    """``source`` with every ``markers`` region (marker lines included) replaced by ``replace(indent, body)``.

    ``indent`` is the begin marker's leading whitespace, ``body`` the lines between the markers.
    Raises ``ValueError`` for a region that is nested or never closed, as nbgrader would refuse it.
    """
    begin, end = markers
    out: list[str] = []
    body: list[str] | None = None
    indent = ""
    for line in source.split("\n"):
        if begin in line:
            if body is not None:
                raise ValueError(f"nested '{begin}' marker")
            body, indent = [], line[: len(line) - len(line.lstrip())]
        elif end in line:
            if body is None:
                raise ValueError(f"'{end}' without '{begin}'")
            out.extend(replace(indent, body))
            body = None
        elif body is not None:
            body.append(line)
        else:
            out.append(line)
    if body is not None:
        raise ValueError(f"'{begin}' is never closed by '{end}'")
    return "\n".join(out)


def region_bodies(source: str, markers: tuple[str, str] = SOLUTION) -> list[tuple[str, list[str]]]:
    """``(indent, lines)`` of every region of ``source`` between ``markers``."""
    found: list[tuple[str, list[str]]] = []
    replace_regions(source, markers, lambda indent, body: found.append((indent, body)) or [])
    return found


def _python(source: str) -> str:
    """Cell source as Python (IPython's ``%magic`` / ``!shell`` lines turned into calls)."""
    try:
        from IPython.core.inputtransformer2 import TransformerManager
    except ImportError:  # pragma: no cover - IPython is part of the course environment
        return "\n".join("pass" if line.lstrip()[:1] in "%!" and line.strip() else line for line in source.split("\n"))
    return TransformerManager().transform_cell(source)


@dataclass
class _Scope:
    names: set[str]
    immediate: bool  # runs when the cell runs (module, class body, comprehension) rather than when called
    is_class: bool = False


@dataclass
class Names:
    """What one cell does with the notebook's global names."""

    reads: set[str] = field(default_factory=set)  # loaded from globals before the cell binds them
    binds: set[str] = field(default_factory=set)  # bound at module level


class _Visitor(ast.NodeVisitor):
    def __init__(self) -> None:
        self.names = Names()
        self.deferred: set[str] = set()
        self.scopes: list[_Scope] = []

    # -- names ------------------------------------------------------------------------------
    def _load(self, name: str) -> None:
        for depth, scope in enumerate(reversed(self.scopes)):
            if name in scope.names and (depth == 0 or not scope.is_class):  # a class body is no enclosing scope
                return
        if all(s.immediate for s in self.scopes):
            if name not in self.names.binds:
                self.names.reads.add(name)
        else:
            self.deferred.add(name)

    def _store(self, name: str) -> None:
        if self.scopes:
            self.scopes[-1].names.add(name)
        else:
            self.names.binds.add(name)

    def visit_Name(self, node: ast.Name) -> None:
        (self._load if isinstance(node.ctx, ast.Load) else self._store)(node.id)

    # -- statements in evaluation order ------------------------------------------------------
    def visit_Assign(self, node: ast.Assign) -> None:
        self.visit(node.value)
        for target in node.targets:
            self.visit(target)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        if isinstance(node.target, ast.Name):
            self._load(node.target.id)
        self.visit(node.value)
        self.visit(node.target)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.visit(node.value)
        self.visit(node.target)

    def visit_For(self, node: ast.For) -> None:
        self.visit(node.iter)
        self.visit(node.target)
        for stmt in node.body + node.orelse:
            self.visit(stmt)

    visit_AsyncFor = visit_For

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self.visit(node.value)
        self.visit(node.target)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._store(alias.asname or alias.name.split(".")[0])

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        for alias in node.names:
            if alias.name != "*":
                self._store(alias.asname or alias.name)

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.type is not None:
            self.visit(node.type)
        if node.name:
            self._store(node.name)
        for stmt in node.body:
            self.visit(stmt)

    # -- new scopes -------------------------------------------------------------------------
    def _function(self, node, body: list) -> None:
        args = node.args
        for default in args.defaults + [d for d in args.kw_defaults if d is not None]:
            self.visit(default)
        params = {a.arg for a in args.posonlyargs + args.args + args.kwonlyargs}
        params |= {a.arg for a in (args.vararg, args.kwarg) if a is not None}
        self.scopes.append(_Scope(params | _assigned(body), immediate=False))
        for stmt in body:
            self.visit(stmt)
        self.scopes.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        for decorator in node.decorator_list:
            self.visit(decorator)
        self._store(node.name)
        self._function(node, node.body)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self._function(node, [node.body])

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for expr in node.decorator_list + node.bases + [k.value for k in node.keywords]:
            self.visit(expr)
        immediate = all(s.immediate for s in self.scopes)
        self.scopes.append(_Scope(set(), immediate=immediate, is_class=True))
        for stmt in node.body:
            self.visit(stmt)
        self.scopes.pop()
        self._store(node.name)

    def _comprehension(self, node, elements: list) -> None:
        first, *rest = node.generators
        self.visit(first.iter)  # evaluated in the enclosing scope
        immediate = all(s.immediate for s in self.scopes)
        self.scopes.append(_Scope(set(), immediate=immediate))
        for number, gen in enumerate(node.generators):
            if number:
                self.visit(gen.iter)
            self.visit(gen.target)
            for cond in gen.ifs:
                self.visit(cond)
        for element in elements:
            self.visit(element)
        self.scopes.pop()

    def visit_ListComp(self, node) -> None:
        self._comprehension(node, [node.elt])

    visit_SetComp = visit_GeneratorExp = visit_ListComp

    def visit_DictComp(self, node: ast.DictComp) -> None:
        self._comprehension(node, [node.key, node.value])


def _assigned(body: list) -> set[str]:
    """Names a function body makes local (assigned, imported, defined), minus its ``global`` ones."""
    local, declared = set(), set()
    todo = list(body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Global):
            declared.update(node.names)
        elif isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            local.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            local.update(a.asname or a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            local.add(node.name)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            local.add(node.name)
            todo.extend(node.decorator_list)
            continue  # its body is its own scope
        if isinstance(node, (ast.Lambda, ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
            continue
        todo.extend(ast.iter_child_nodes(node))
    return local - declared


def cell_names(source: str) -> Names | None:
    """The globals a code cell reads and binds (``None`` when it is not valid Python)."""
    try:
        tree = ast.parse(_python(source))
    except SyntaxError:
        return None
    visitor = _Visitor()
    for stmt in tree.body:
        visitor.visit(stmt)
    visitor.names.reads |= visitor.deferred - visitor.names.binds
    return visitor.names


def _label(nb, index: int) -> str:
    cell = nb.cells[index]
    grade_id = nbgrader(cell).get("grade_id")
    first = next((line.strip() for line in cell.source.split("\n") if line.strip()), "")
    return f"cell {index} ({grade_id})" if grade_id else f"cell {index} ({first[:50]!r})"


def starting_names(source: str) -> set[str]:
    """The ``name = None`` starting lines of a solution cell (outside its solution markers)."""
    outside = replace_regions(source, SOLUTION, lambda indent, body: [])
    return {m.group(1) for line in outside.split("\n") if (m := STARTING_LINE.match(line))}


def problems(nb) -> list[str]:
    """Every way the notebook ``nb`` breaks the workbook conventions, one sentence each (empty: none)."""
    found: list[str] = []
    cells = nb.cells
    setup = next((i for i, c in enumerate(cells) if c.cell_type == "code" and SETUP_CALL.search(c.source)), None)
    first_exercise = next((i for i, c in enumerate(cells) if is_solution(c)), None)
    if first_exercise is not None and (setup is None or setup > first_exercise):
        found.append(f"no `setup_notebook(...)` call before the first exercise ({_label(nb, first_exercise)}): "
                     "the workbook cannot switch the checks to workbook mode")
    stub_binds: dict[int, set[str]] = {}  # exercise cell -> names its workbook form binds
    for i, cell in enumerate(cells):
        if cell.cell_type == "markdown" and nbgrader(cell).get("solution"):
            found.append(f"{_label(nb, i)} is a markdown solution cell: workbooks support code exercises only")
        if not is_solution(cell):
            continue
        try:
            bodies = region_bodies(cell.source)
            stub = replace_regions(cell.source, SOLUTION, lambda indent, body: [indent + "pass"] if indent else [])
        except ValueError as exc:
            found.append(f"{_label(nb, i)}: solution markers are broken ({exc})")
            continue
        if not bodies:
            found.append(f"{_label(nb, i)} has no solution between the markers")
        if i + 1 >= len(cells) or not is_test(cells[i + 1]):
            found.append(f"{_label(nb, i)} is not followed directly by its test cell")
        names = cell_names(stub)
        stub_binds[i] = names.binds if names else set()
        if i + 1 < len(cells) and is_test(cells[i + 1]):
            check = cell_names(cells[i + 1].source)
            full = cell_names(cell.source)
            if check and full:
                for name in sorted((check.reads & full.binds) - stub_binds[i]):
                    found.append(f"{_label(nb, i)}: the check reads `{name}`, which only the solution sets; start "
                                 f"the cell with `{name} = None` before the markers")
    found += _later_uses(nb, stub_binds)
    return found


def _later_uses(nb, stub_binds: dict[int, set[str]]) -> list[str]:
    """Cells (other than test cells) that read a name whose last binding is in an exercise cell."""
    found = []
    last: dict[str, int] = {}  # name -> the cell that bound it last
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        names = cell_names(cell.source)
        if names is None:
            continue
        if not is_test(cell):
            for name in sorted(names.reads):
                j = last.get(name)
                if j is None or j == i or j not in stub_binds:
                    continue
                if name in stub_binds[j]:
                    found.append(f"{_label(nb, i)} uses `{name}`, last set in exercise {_label(nb, j)} outside "
                                 "the solution markers: in a workbook that cell is the learner's, so an edit there "
                                 f"changes this cell; set `{name}` in an ordinary cell (or use another name)")
                else:
                    found.append(f"{_label(nb, i)} uses `{name}`, which only the solution of exercise "
                                 f"{_label(nb, j)} defines: it does not exist in a workbook")
        for name in names.binds:
            last[name] = i
    return found

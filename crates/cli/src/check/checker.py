"""Static checks of a Machinist test script (module `machinist_check`), before anything boots.

`check(source, filename, machine_names, globals_dict, machine_cls)` compiles the script and walks
its AST; it returns a list of (line, column, message). `api(machine_cls, globals_dict)` describes
the Machine methods and the globals (name, signature, docstring) for the type stubs.
"""

import ast
import builtins
import difflib
import inspect


def _signature(obj, drop_self):
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    params = list(sig.parameters.values())
    if drop_self and params and params[0].name in ("self", "$self"):
        sig = sig.replace(parameters=params[1:])
    return sig


def machine_methods(machine_cls):
    """{name: (signature or None, doc, is_property)} of the public Machine API."""
    out = {}
    for name in sorted(dir(machine_cls)):
        if name.startswith("_"):
            continue
        attr = inspect.getattr_static(machine_cls, name)
        value = getattr(machine_cls, name)
        doc = inspect.getdoc(value) or ""
        if callable(value) and not inspect.isdatadescriptor(attr):
            out[name] = (_signature(value, True), doc, False)
        else:
            out[name] = (None, doc, True)
    return out


def api(machine_cls, globals_dict):
    """(methods, functions, others): each a list of (name, signature text or None, doc)."""
    methods = []
    for name, (sig, doc, is_prop) in machine_methods(machine_cls).items():
        methods.append((name, None if is_prop else (str(sig) if sig else "(*args, **kwargs)"), doc, is_prop))
    functions, others = [], []
    for name in sorted(globals_dict):
        if name.startswith("__"):
            continue
        value = globals_dict[name]
        doc = inspect.getdoc(value) or ""
        if inspect.isclass(value):
            bases = ", ".join(b.__name__ for b in value.__bases__)
            others.append((name, "class " + bases, doc))
        elif callable(value):
            sig = _signature(value, False)
            functions.append((name, str(sig) if sig else "(*args, **kwargs)", doc))
        else:
            others.append((name, type(value).__name__, ""))
    return methods, functions, others


class _Names(ast.NodeVisitor):
    """Every name the script binds anywhere (assignments, defs, imports, loops, with, except...)."""

    def __init__(self):
        self.bound = set()

    def visit_Name(self, node):
        if isinstance(node.ctx, (ast.Store, ast.Del)):
            self.bound.add(node.id)

    def _def(self, node):
        self.bound.add(node.name)
        for a in node.args.posonlyargs + node.args.args + node.args.kwonlyargs:
            self.bound.add(a.arg)
        if node.args.vararg:
            self.bound.add(node.args.vararg.arg)
        if node.args.kwarg:
            self.bound.add(node.args.kwarg.arg)
        self.generic_visit(node)

    visit_FunctionDef = visit_AsyncFunctionDef = _def

    def visit_Lambda(self, node):
        for a in node.args.posonlyargs + node.args.args + node.args.kwonlyargs:
            self.bound.add(a.arg)
        self.generic_visit(node)

    def visit_ClassDef(self, node):
        self.bound.add(node.name)
        self.generic_visit(node)

    def visit_Import(self, node):
        for a in node.names:
            self.bound.add((a.asname or a.name).split(".")[0])

    def visit_ImportFrom(self, node):
        for a in node.names:
            self.bound.add(a.asname or a.name)

    def visit_ExceptHandler(self, node):
        if node.name:
            self.bound.add(node.name)
        self.generic_visit(node)

    def visit_Global(self, node):
        self.bound.update(node.names)

    def visit_MatchAs(self, node):
        if node.name:
            self.bound.add(node.name)
        self.generic_visit(node)


def _suggest(name, choices):
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(close)}?)" if close else ""


def _arity_problem(sig, call, what):
    """A message when the call's arguments cannot bind to `sig`, else None."""
    if sig is None:
        return None
    if any(isinstance(a, ast.Starred) for a in call.args) or any(k.arg is None for k in call.keywords):
        return None  # *args / **kwargs: unknown count
    args = [object()] * len(call.args)
    kwargs = {k.arg: object() for k in call.keywords}
    try:
        sig.bind(*args, **kwargs)
    except TypeError as e:
        return f"{what} takes {sig}: {e}"
    return None


def check(source, filename, machine_names, globals_dict, machine_cls):
    try:
        tree = compile(source, filename, "exec", ast.PyCF_ONLY_AST)
        compile(tree, filename, "exec")
    except SyntaxError as e:
        return [(e.lineno or 0, e.offset or 0, f"SyntaxError: {e.msg}")]
    methods = machine_methods(machine_cls)
    machines = set(machine_names)
    names = _Names()
    names.visit(tree)
    known = set(globals_dict) | set(dir(builtins)) | names.bound | machines
    problems = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            obj = func.value.id
            if obj in machines and obj not in names.bound:
                entry = methods.get(func.attr)
                if entry is None:
                    problems.append(
                        (func.lineno, func.col_offset + 1,
                         f"`{obj}.{func.attr}`: Machine has no method `{func.attr}`"
                         + _suggest(func.attr, methods))
                    )
                elif entry[2]:
                    problems.append(
                        (func.lineno, func.col_offset + 1,
                         f"`{obj}.{func.attr}` is a property, not a method: drop the parentheses")
                    )
                else:
                    msg = _arity_problem(entry[0], node, f"`{obj}.{func.attr}`")
                    if msg:
                        problems.append((node.lineno, node.col_offset + 1, msg))
            elif obj not in known:
                problems.append(
                    (func.lineno, func.col_offset + 1,
                     f"`{obj}.{func.attr}(...)`: no machine or name `{obj}`"
                     + _suggest(obj, machines | set(globals_dict)))
                )
        elif isinstance(func, ast.Name):
            name = func.id
            if name not in known:
                problems.append(
                    (func.lineno, func.col_offset + 1,
                     f"`{name}(...)`: no function or name `{name}`" + _suggest(name, set(globals_dict) | names.bound))
                )
            elif name in globals_dict and name not in names.bound and callable(globals_dict[name]) \
                    and not inspect.isclass(globals_dict[name]):
                msg = _arity_problem(_signature(globals_dict[name], False), node, f"`{name}`")
                if msg:
                    problems.append((node.lineno, node.col_offset + 1, msg))
    problems.sort()
    return problems

"""Write ``celery_names.json``: Celery's settings, commands and options, read from its source.

Usage: ``python tests/docs/make_celery_names.py /tmp/celery-5.4.0`` (an unpacked Celery
sdist: ``pip download --no-deps --no-binary :all: celery==5.4.0``). The source is parsed,
never imported, so Celery need not be installed. ``tests/docs/test_migrating.py`` checks
that docs/migrating-from-celery.md names every one of them.
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

OUT = Path(__file__).with_name("celery_names.json")


def settings(defaults: Path) -> list[str]:
    """Every name in ``celery.app.defaults.NAMESPACES``, flattened as Celery does."""
    tree = ast.parse(defaults.read_text())
    [namespaces] = [
        node.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "NAMESPACES" for t in node.targets)
    ]
    names: list[str] = []

    def walk(call: ast.expr, prefix: str) -> None:
        assert isinstance(call, ast.Call)
        for keyword in call.keywords:
            if keyword.arg is None or keyword.arg == "__old__":
                continue
            value = keyword.value
            func = value.func if isinstance(value, ast.Call) else None
            if isinstance(func, ast.Name) and func.id == "Namespace":
                walk(value, f"{prefix}{keyword.arg}_")
            else:
                names.append(prefix + keyword.arg)

    walk(namespaces, "")
    return sorted(names)


def _option_names(call: ast.Call) -> list[str]:
    return [
        arg.value
        for arg in call.args
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value[:1] == "-"
    ]


def _long_name(spellings: list[str]) -> str:
    """An option's first ``--long`` spelling (its short one if it has none)."""
    name = next((s for s in spellings if s.startswith("--")), spellings[0])
    return name.split("/", 1)[0]  # "--flag/--no-flag": the flag


def click_options(path: Path, function: str) -> list[str]:
    """The ``--long`` name of every ``@click.option`` on ``function`` in ``path``."""
    tree = ast.parse(path.read_text())
    [func] = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == function]
    out = []
    for deco in func.decorator_list:
        if (
            isinstance(deco, ast.Call)
            and isinstance(deco.func, ast.Attribute)
            and deco.func.attr == "option"
        ):
            out.append(_long_name(_option_names(deco)))
    return out


def daemon_options(base: Path) -> list[str]:
    """The options ``CeleryDaemonCommand`` adds to ``celery worker`` and ``celery beat``."""
    tree = ast.parse(base.read_text())
    return [
        _long_name(_option_names(node))
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "DaemonOption"
        and _option_names(node)
    ]


def commands(celery_py: Path) -> list[str]:
    """``celery``'s subcommands: those added with ``add_command`` and those it defines."""
    tree = ast.parse(celery_py.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "add_command"
            and isinstance(node.args[0], ast.Name)
        ):
            names.add(node.args[0].id.rstrip("_"))
        if isinstance(node, ast.FunctionDef):
            for deco in node.decorator_list:
                target = deco.func if isinstance(deco, ast.Call) else deco
                if (
                    isinstance(target, ast.Attribute)
                    and target.attr == "command"
                    and isinstance(target.value, ast.Name)
                    and target.value.id == "celery"
                ):
                    names.add(node.name)
    return sorted(names)


def remote_commands(control_py: Path, kind: str) -> list[str]:
    """The worker's remote-control commands of one kind (``inspect`` or ``control``)."""
    tree = ast.parse(control_py.read_text())
    names = []
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef):
            continue
        for deco in node.decorator_list:
            if (
                isinstance(deco, ast.Call)
                and isinstance(deco.func, ast.Name)
                and deco.func.id == f"{kind}_command"
            ):
                given = {k.arg: k.value for k in deco.keywords}
                visible = given.get("visible")
                if isinstance(visible, ast.Constant) and visible.value is False:
                    continue  # internal (mingle's hello)
                name = given.get("name")
                names.append(name.value if isinstance(name, ast.Constant) else node.name)
    return sorted(names)


def signals(signals_py: Path) -> list[str]:
    """The names in ``celery.signals.__all__``."""
    tree = ast.parse(signals_py.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            return sorted(ast.literal_eval(node.value))
    raise ValueError(f"no __all__ in {signals_py}")


def main(root: Path) -> None:
    pkg = root / "celery"
    version = ast.literal_eval(
        next(
            line.split("=", 1)[1]
            for line in (pkg / "__init__.py").read_text().splitlines()
            if line.startswith("__version__")
        )
    )
    bin_ = pkg / "bin"
    data = {
        "celery_version": version,
        "settings": settings(pkg / "app" / "defaults.py"),
        "commands": commands(bin_ / "celery.py"),
        "global_options": click_options(bin_ / "celery.py", "celery"),
        "worker_options": click_options(bin_ / "worker.py", "worker")
        + daemon_options(bin_ / "base.py"),
        "beat_options": click_options(bin_ / "beat.py", "beat"),
        "inspect_commands": remote_commands(pkg / "worker" / "control.py", "inspect"),
        "control_commands": remote_commands(pkg / "worker" / "control.py", "control"),
        "signals": signals(pkg / "signals.py"),
    }
    OUT.write_text(json.dumps(data, indent=1) + "\n")
    print(
        f"wrote {OUT}: "
        + ", ".join(f"{k} {len(v)}" for k, v in data.items() if isinstance(v, list))
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))

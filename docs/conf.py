"""Sphinx configuration of the torchnf documentation site.

Sphinx rather than MkDocs: the docstrings are written with reST roles (``:math:``,
``:class:``, ``:func:``) and Google-style sections, which autodoc and napoleon render as
they are, and ``nitpicky`` with ``-W`` (``make``-free: ``sphinx-build -W -n``) turns every
broken cross-reference into a build failure. Pages are Markdown (MyST). The command-line
reference comes from the argument parsers (sphinx-argparse), the API reference from the
docstrings (autodoc), and the figures from ``docs/figures.py``, run at every build.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jupyter_server_mathjax

DOCS = Path(__file__).parent
sys.path.insert(0, str(DOCS.parent / "src"))

project = "torchnf"
author = "the torchnf authors"
copyright = "2026, the torchnf authors"

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinxarg.ext",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "_generated/*.log"]
myst_enable_extensions = ["dollarmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
myst_update_mathjax = False  # its MathJax 3 options would stop MathJax 2
# Pages that include README sections start their levels below the page title.
suppress_warnings = ["myst.header"]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_inherit_docstrings = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_custom_sections = [("References", "notes_style"), ("Shapes", "notes_style")]

nitpicky = True
# Types from outside torchnf (no intersphinx: the build must not need the network).
nitpick_ignore_regex = [
    (r"py:.*", r"(torch|numpy|np|nn|optim|typing|collections|argparse|os|pathlib|pyro|sbi)\b.*"),
    (r"py:.*", r"(Tensor|Module|Parameter|Optimizer|Dataset|DataLoader|Distribution)"),
    (r"py:.*", r"(Path|PathLike|Callable|Sequence|Iterable|Iterator|Mapping|Any|Literal)"),
    (r"py:.*", r"(Self|TypeVar|B|T|NoReturn|ArgumentParser|Namespace|ndarray|dtype|device)"),
    (r"py:.*", r"(int|float|str|bool|dict|list|tuple|None|object|type|optional)"),
    (r"py:.*", r"(abc\.ABC|(.*\.)?_\w+)"),  # standard-library bases, private helpers
    (r"py:.*", r"(.*\.)?(Shape|B|T)"),  # annotation aliases and type variables
    # Classes built inside functions, when Pyro or sbi is imported (documented in prose there).
    (r"py:.*", r"(.*\.)?(PyroFlowDistribution|FlowEstimator)"),
]

html_theme = "furo"
html_title = "torchnf"
# MathJax from the jupyter-server-mathjax package (MathJax 2.7, no network at build or read time).
html_static_path = [str(Path(jupyter_server_mathjax.__file__).parent / "static")]
mathjax_path = "MathJax.js?config=TeX-AMS-MML_HTMLorMML-full"
mathjax3_config = None
mathjax2_config = {"tex2jax": {"inlineMath": [["\\(", "\\)"]], "displayMath": [["\\[", "\\]"]]}}


def _figures(app: Any) -> None:
    """Run ``docs/figures.py``: every figure of the site, produced by the code at build time."""
    out = DOCS / "_generated"
    if os.environ.get("TORCHNF_DOCS_FIGURES") == "reuse" and any(out.glob("family_*.png")):
        return  # while editing pages only; CI and releases always make them
    subprocess.run([sys.executable, str(DOCS / "figures.py"), "--out", str(out)], check=True)


def _resolve_by_name(app: Any, env: Any, node: Any, contnode: Any) -> Any:
    """Resolve a Python reference that autodoc's module context misses.

    Objects are documented once, where users import them (``torchnf.layers.ActNorm``), but
    docstrings name them as their own module sees them (``ActNorm``,
    ``torchnf.layers.linear.ActNorm``). A reference is resolved to the one documented object
    with the same last name component, and a module reference to its nearest documented
    parent package. Anything else stays missing, and ``-n -W`` fails the build.
    """
    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"].removeprefix("~")
    domain = env.get_domain("py")
    if node["reftype"] == "mod":
        parts = target.split(".")
        while parts:
            name = ".".join(parts)
            if name in domain.modules:
                return _reference(app, node, contnode, name, "module")
            parts.pop()
        return None
    tail = target.split(".")[-1]
    owner = target.split(".")[-2] if target.count(".") >= 1 else None
    matches = [
        name
        for name, entry in domain.objects.items()
        if name.split(".")[-1] == tail
        and not entry.aliased
        and (owner is None or owner[:1].islower() or name.split(".")[-2] == owner)
    ]
    if not matches:
        return None
    # Several objects of that name (``initialize`` of Flow and of ActNorm): the one of the
    # referring class if there is one, else the most general (shortest) name.
    here = node.get("py:class")
    own = [m for m in matches if here and m.split(".")[-2] == here.split(".")[-1]]
    name = min(own or matches, key=lambda m: (len(m.split(".")), m))
    return _reference(app, node, contnode, name, domain.objects[name].objtype)


def _reference(app: Any, node: Any, contnode: Any, name: str, objtype: str) -> Any:
    domain = app.env.get_domain("py")
    return domain.resolve_xref(
        app.env, node["refdoc"], app.builder, objtype_role(objtype), name, node, contnode
    )


def objtype_role(objtype: str) -> str:
    return {"module": "mod", "function": "func", "method": "meth", "data": "data"}.get(
        objtype, "class" if objtype in ("class", "exception") else "obj"
    )


def setup(app: Any) -> None:
    app.connect("builder-inited", _figures)
    app.connect("missing-reference", _resolve_by_name)

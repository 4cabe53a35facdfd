"""The package's layers: ``import ddim_jax`` and the math modules load no application stack, and no
module of ``ddim_jax`` imports another in a cycle."""

import ast
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEAVY = ("orbax", "optax", "ml_collections", "grain", "tensorflow_datasets", "tensorstore", "torch")
MATH = ("schedules", "diffusion", "sampling", "solvers", "guidance", "validation", "errors")


def test_import_ddim_jax_loads_only_the_math():
    code = ("import sys, ddim_jax; "
            + "; ".join(f"import ddim_jax.{name}" for name in MATH)
            + f"; print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_lazy_names_resolve():
    code = ("import ddim_jax; from ddim_jax import UNet, create_model, load_diffusers_unet; "
            "print(UNet.__module__, create_model.__module__, load_diffusers_unet.__module__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["ddim_jax.models.unet", "ddim_jax.models.unet", "ddim_jax.pretrained.unet_mapping"]


def _module_imports() -> dict[str, set[str]]:
    """Module name -> the ddim_jax modules it imports at module level (not inside functions)."""
    graph = {}
    root = os.path.join(REPO, "ddim_jax")
    for folder, _, files in os.walk(root):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            module = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".").removesuffix(".__init__")
            targets = set()
            for node in ast.parse(open(path).read()).body:
                if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ddim_jax"):
                    targets.add(node.module)
                    targets.update(f"{node.module}.{alias.name}" for alias in node.names)
                elif isinstance(node, ast.Import):
                    targets.update(alias.name for alias in node.names if alias.name.startswith("ddim_jax"))
            graph[module] = targets
    return {module: {t for t in targets if t in graph and t != module} for module, targets in graph.items()}


def test_math_layer_imports_no_application_module():
    graph = _module_imports()
    math = {f"ddim_jax.{name}" for name in MATH} | {"ddim_jax"}
    math |= {m for m in graph if any(m.startswith(f"ddim_jax.{name}.") for name in MATH)}  # math packages
    for module in math:
        assert graph[module] <= math, (module, graph[module] - math)


def test_no_import_cycle():
    graph = _module_imports()
    state = {}

    def visit(module, stack):
        state[module] = "open"
        for target in graph[module]:
            # a package importing its own submodules is not a cycle through the package
            if module.startswith(target + ".") or target.startswith(module + "."):
                continue
            if state.get(target) == "open":
                raise AssertionError(" -> ".join(stack + [module, target]))
            if target not in state:
                visit(target, stack + [module])
        state[module] = "done"

    for module in graph:
        if module not in state:
            visit(module, [])


def test_docs_layout_lists_every_module():
    """docs/layout.md names every module of ddim_jax/ (and no module that is gone)."""
    text = open(os.path.join(REPO, "docs", "layout.md")).read()
    modules = set()
    for folder, _, files in os.walk(os.path.join(REPO, "ddim_jax")):
        modules.update(os.path.relpath(os.path.join(folder, name), REPO) for name in files if name.endswith(".py"))
    package_inits = {m for m in modules if m.endswith("__init__.py") and f"`{m}`" not in text}
    missing = sorted(m for m in modules - package_inits if f"`{m}`" not in text)
    assert not missing, f"docs/layout.md does not list {missing}"
    for init in package_inits:  # listed by folder in the last row
        assert os.path.basename(os.path.dirname(init)) + "/__init__.py" in text, init
    listed = set(__import__("re").findall(r"`(ddim_jax/[\w/]+\.py)`", text))
    assert listed <= modules, f"docs/layout.md lists modules that do not exist: {sorted(listed - modules)}"

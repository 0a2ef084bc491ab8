"""hogx's domain core: matching, the durable journal and settlement.

The modules every command passes through are compiled to C extensions with mypyc (listed in
``setup.py``); they stay plain typed Python and run as such where no build exists. In a source
checkout a build lies beside its source, and Python would import it even after the source changed,
so importing this package refuses a build older than its source: ``make`` rebuilds it.
"""

import sysconfig
from pathlib import Path


def refuse_stale_builds(package: Path) -> None:
    """Raise ImportError if a compiled module of ``package`` (a source checkout's) is older than its source."""
    if not (package.parent / "setup.py").exists():
        return  # an installed package: its build and sources came together from one wheel
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    for built in package.rglob(f"*{suffix}"):
        source = built.with_name(built.name[: -len(suffix)] + ".py")
        if source.exists() and source.stat().st_mtime > built.stat().st_mtime:
            raise ImportError(
                f"{source} changed after it was compiled: run `make` (or `pip install -e .`) to rebuild it, "
                "or `HOGX_COMPILE=0 make` to run the core uncompiled"
            )


refuse_stale_builds(Path(__file__).parent)

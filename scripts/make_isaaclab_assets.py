"""Write stand-in USD assets for Isaac Lab's stock cartpole tasks into a local asset root.

Isaac Lab 3.0's wheel ships no assets: its configs name files on NVIDIA's asset server
(`{ISAACSIM_ASSET_ROOT}/Isaac/IsaacLab/...`), which these machines cannot reach. Pointing
`ISAACSIM_ASSET_ROOT` at the folder this script fills makes the stock cartpole tasks build offline.
The files are STAND-INS written here with `pxr`, not NVIDIA's assets: a cartpole with the same
prim, body and joint names (`/cartpole`, `slider`/`cart`/`pole`, `slider_to_cart`, `cart_to_pole`)
and plausible sizes and masses, and a grey ground plane laid out like Isaac Sim's grid plane
(`/Environment/Geometry` mesh, a collision `Plane`). Dynamics and looks differ from the originals.

    .venv-isaaclab/bin/python scripts/make_isaaclab_assets.py DIR   # then ISAACSIM_ASSET_ROOT=DIR

Run by scripts/install_isaaclab.sh; idempotent (files are rewritten).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pxr import Gf, Sdf, Usd, UsdGeom, UsdPhysics

CARTPOLE = "Isaac/IsaacLab/Robots/Classic/Cartpole/cartpole.usd"
GROUND = "Isaac/IsaacLab/Environments/Grid/default_ground_plane_checker_v1/default_ground_plane.usda"
STAND_IN_NOTE = "rolloutq stand-in asset (scripts/make_isaaclab_assets.py), not NVIDIA's"


def _new_stage(path: Path, root: str) -> tuple[Usd.Stage, Usd.Prim]:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()
    stage = Usd.Stage.CreateNew(str(path))
    UsdGeom.SetStageUpAxis(stage, UsdGeom.Tokens.z)
    UsdGeom.SetStageMetersPerUnit(stage, 1.0)
    prim = UsdGeom.Xform.Define(stage, root).GetPrim()
    stage.SetDefaultPrim(prim)
    stage.GetRootLayer().documentation = STAND_IN_NOTE
    return stage, prim


def _box_body(stage: Usd.Stage, path: str, center: tuple[float, float, float], size: tuple[float, float, float],
              mass: float, color: tuple[float, float, float]) -> None:
    """A rigid body with one box (visual only: the cartpole's bodies never touch anything)."""
    body = UsdGeom.Xform.Define(stage, path)
    body.AddTranslateOp().Set(Gf.Vec3d(*center))
    UsdPhysics.RigidBodyAPI.Apply(body.GetPrim())
    mass_api = UsdPhysics.MassAPI.Apply(body.GetPrim())
    mass_api.CreateMassAttr(mass)
    sx, sy, sz = size  # a solid box's principal inertia
    mass_api.CreateDiagonalInertiaAttr(Gf.Vec3f(mass * (sy * sy + sz * sz) / 12, mass * (sx * sx + sz * sz) / 12,
                                                mass * (sx * sx + sy * sy) / 12))
    cube = UsdGeom.Cube.Define(stage, f"{path}/visual")
    cube.CreateSizeAttr(1.0)
    cube.AddScaleOp().Set(Gf.Vec3f(*size))
    cube.CreateDisplayColorAttr([Gf.Vec3f(*color)])


def write_cartpole(path: Path) -> None:
    """A rail along y (fixed to the world), a cart sliding on it, a 1 m pole hinged on the cart about x."""
    stage, root = _new_stage(path, "/cartpole")
    UsdPhysics.ArticulationRootAPI.Apply(root)
    _box_body(stage, "/cartpole/slider", (0.0, 0.0, 0.0), (0.03, 8.0, 0.03), 1.0, (0.85, 0.6, 0.2))
    _box_body(stage, "/cartpole/cart", (0.0, 0.0, 0.0), (0.2, 0.25, 0.2), 1.0, (0.25, 0.45, 0.75))
    _box_body(stage, "/cartpole/pole", (0.12, 0.0, 0.5), (0.04, 0.06, 1.0), 0.25, (0.8, 0.2, 0.2))
    anchor = UsdPhysics.FixedJoint.Define(stage, "/cartpole/rootJoint")
    anchor.CreateBody1Rel().SetTargets([Sdf.Path("/cartpole/slider")])
    slide = UsdPhysics.PrismaticJoint.Define(stage, "/cartpole/slider_to_cart")
    slide.CreateBody0Rel().SetTargets([Sdf.Path("/cartpole/slider")])
    slide.CreateBody1Rel().SetTargets([Sdf.Path("/cartpole/cart")])
    slide.CreateAxisAttr("Y")
    slide.CreateLowerLimitAttr(-4.0)
    slide.CreateUpperLimitAttr(4.0)
    slide.CreateLocalPos0Attr(Gf.Vec3f(0.0, 0.0, 0.0))
    slide.CreateLocalPos1Attr(Gf.Vec3f(0.0, 0.0, 0.0))
    hinge = UsdPhysics.RevoluteJoint.Define(stage, "/cartpole/cart_to_pole")
    hinge.CreateBody0Rel().SetTargets([Sdf.Path("/cartpole/cart")])
    hinge.CreateBody1Rel().SetTargets([Sdf.Path("/cartpole/pole")])
    hinge.CreateAxisAttr("X")
    hinge.CreateLocalPos0Attr(Gf.Vec3f(0.12, 0.0, 0.0))
    hinge.CreateLocalPos1Attr(Gf.Vec3f(0.0, 0.0, -0.5))
    stage.GetRootLayer().Save()


def write_ground(path: Path, half: float = 50.0) -> None:
    """A 100 m x 100 m grey plane: a visual mesh under /Environment (which Isaac Lab rescales) and a
    collision plane."""
    stage, _ = _new_stage(path, "/World")
    env = UsdGeom.Xform.Define(stage, "/World/Environment")
    env.AddScaleOp().Set(Gf.Vec3f(1.0, 1.0, 1.0))
    mesh = UsdGeom.Mesh.Define(stage, "/World/Environment/Geometry")
    mesh.CreatePointsAttr([(-half, -half, 0.0), (half, -half, 0.0), (half, half, 0.0), (-half, half, 0.0)])
    mesh.CreateFaceVertexCountsAttr([4])
    mesh.CreateFaceVertexIndicesAttr([0, 1, 2, 3])
    mesh.CreateDisplayColorAttr([Gf.Vec3f(0.5, 0.5, 0.5)])
    uv = UsdGeom.PrimvarsAPI(mesh).CreatePrimvar("st", Sdf.ValueTypeNames.TexCoord2fArray, UsdGeom.Tokens.vertex)
    uv.Set([(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)])
    plane = UsdGeom.Plane.Define(stage, "/World/GroundPlane/CollisionPlane")
    plane.CreatePurposeAttr(UsdGeom.Tokens.guide)
    plane.CreateAxisAttr("Z")
    plane.CreateWidthAttr(2 * half)
    plane.CreateLengthAttr(2 * half)
    UsdPhysics.CollisionAPI.Apply(plane.GetPrim())
    stage.GetRootLayer().Save()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="the folder to use as ISAACSIM_ASSET_ROOT")
    root = parser.parse_args().root.resolve()
    write_cartpole(root / CARTPOLE)
    write_ground(root / GROUND)
    print(f"stand-in Isaac Lab assets in {root} (ISAACSIM_ASSET_ROOT={root})")


if __name__ == "__main__":
    main()

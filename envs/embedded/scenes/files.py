"""Scene files: ``.glb`` in and out, the house cache, and the up axis of other people's scenes.

glTF is y-up in metres like the world frame, so generated houses are written and read without
any axis conversion. Habitat's scene files (MP3D, HM3D, its test scenes) are z-up despite glTF:
a scene file is rotated to y-up from the up axis that :func:`load_scene` is given
(``up_axis="z"``), else from a Habitat stage config beside the file
(``<name>.stage_config.json``) or the stage defaults of a ``*.scene_dataset_config.json`` in
its folder or the two above it (keys ``"up"`` and ``"front"``, as Habitat reads them), else it is
taken as y-up. A file taken as y-up whose height (y extent) exceeds 1.5 times its smaller
horizontal extent is refused: indoor scenes are wider than tall, and a z-up file read as y-up
stands on its side.

Basis Universal textures (HM3D's ``.basis.glb``: glTF extension ``KHR_texture_basisu``, KTX2
images) are transcoded to PNG at load time (:mod:`envs.embedded.scenes.basis`), and the rewritten
file is cached on disk under ``<cache root>/decoded-textures`` keyed by the SHA-256 of the
file's bytes (:func:`decoded_texture_dir`): a 1024-pixel ETC1S texture takes about 10 ms to
transcode and 55 ms to store as PNG, seconds for a scene with a hundred of them, while every
process that loads the scene again (data collection workers, later runs) then only hashes the
file and reads the cached one. A file whose bytes change gets a new key, so a cached copy is
never stale.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from pathlib import Path

import numpy as np
import trimesh

from envs.embedded.scenes.basis import decode_basis_textures, has_basis_textures
from envs.embedded.scenes.ids import _ALLOWED_IDS, GENERATOR_VERSION, parse_scene_id
from envs.embedded.scenes.meshes import generate_house

CACHE_ENV_VAR = "PERSISTENT_WORLD_CACHE"
"""Environment variable naming the project's cache root (scenes go to ``<root>/scenes``)."""

UP_AXES = ("y", "z")
"""Up axes a scene file may be given in (:func:`load_scene`)."""
_UP_FRONT = {"y": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)), "z": ((0.0, 0.0, 1.0), (0.0, 1.0, 0.0))}
"""(up, front) of each up axis in the file's frame: glTF's y-up, and Habitat's z-up with front +y
(as in its MP3D and HM3D dataset configs); they map to world +y and -z."""
_MAX_HEIGHT_TO_WIDTH = 1.5
"""A scene taken as y-up may be at most this much taller than its smaller horizontal extent."""
_DATASET_CONFIG_LEVELS = 3
"""Folders searched for a ``*.scene_dataset_config.json``: the scene file's and two above it."""
_DECODED_FORMAT_VERSION = 1
"""Version of the decoded-texture files: bumping it makes every cached decoded file stale."""
_UP_AXIS_FIX = (
    "pass up_axis='z' (IndoorNav(up_axis='z'), SimulatorConfig(up_axis='z') or "
    "load_scene(path, up_axis='z')) or put a Habitat <name>.stage_config.json with \"up\" beside "
    "the file; if the scene really is y-up, pass up_axis='y'"
)


# --------------------------------------------------------------------------------------- files
def default_cache_dir() -> Path:
    """Folder of the generated ``.glb`` houses.

    ``$PERSISTENT_WORLD_CACHE/scenes/v<GENERATOR_VERSION>`` when that variable is set (it must be
    an absolute path), otherwise ``~/.cache/persistent-world/scenes/v<GENERATOR_VERSION>``.

    Raises:
        ValueError: if ``$PERSISTENT_WORLD_CACHE`` is a relative path.
    """
    return _cache_root() / "scenes" / f"v{GENERATOR_VERSION}"


def decoded_texture_dir() -> Path:
    """Folder of scene files whose Basis Universal textures were decoded (see the module doc).

    ``<root>/decoded-textures/v<format version>`` with ``<root>`` the cache root of
    :func:`default_cache_dir` (``$PERSISTENT_WORLD_CACHE`` or ``~/.cache/persistent-world``).
    Each file is ``<sha256 of the original file>.glb``; the folder may be deleted at any time.

    Raises:
        ValueError: if ``$PERSISTENT_WORLD_CACHE`` is a relative path.
    """
    return _cache_root() / "decoded-textures" / f"v{_DECODED_FORMAT_VERSION}"


def _cache_root() -> Path:
    root = os.environ.get(CACHE_ENV_VAR)
    if root:
        path = Path(root).expanduser()
        if not path.is_absolute():
            raise ValueError(
                f"${CACHE_ENV_VAR} must be an absolute path, got {root!r}; "
                "set it to a folder such as /data/persistent-world-cache"
            )
    else:
        path = Path.home() / ".cache" / "persistent-world"
    return path


def export_glb(scene: trimesh.Scene, path: str | Path) -> Path:
    """Write a scene to a binary glTF file atomically (temporary file, then rename).

    Args:
        scene: the scene; its world frame is written as is (glTF is y-up, metres).
        path: destination ``.glb``; missing parent folders are created.

    Returns:
        The destination path.
    """
    return _write_atomically(scene.export(file_type="glb"), path)


def _write_atomically(data: bytes, path: str | Path) -> Path:
    """Write bytes to ``path`` through a temporary file and a rename; create missing folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.chmod(temporary, 0o644)  # mkstemp creates owner-only files; scenes are shareable
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def load_glb(path: str | Path) -> trimesh.Scene:
    """Read a binary glTF file as a scene, without any axis conversion.

    Basis Universal (KTX2 / ``.basis``) textures are decoded to RGBA, through the decoded-texture
    cache (:func:`decoded_texture_dir`; see the module docstring).

    Args:
        path: a ``.glb`` file.

    Returns:
        The scene, with at least one triangle.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file is not a binary glTF, is truncated, cannot be parsed, has a
            corrupt Basis Universal texture or has no triangles; the message names the path and
            the problem.
        ImportError: if the file has Basis Universal textures and the transcoder package
            (``opengl-basisu``) is missing; the message says what to install.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"scene file {str(path)!r} does not exist (or is not a file)")
    data = path.read_bytes()
    if len(data) < 12 or data[:4] != b"glTF":
        raise ValueError(
            f"{str(path)!r} is not a binary glTF (.glb) file: it does not start with the "
            f"'glTF' magic bytes (got {data[:4]!r}); export the scene as .glb"
        )
    version, declared = struct.unpack_from("<II", data, 4)
    if version != 2:
        raise ValueError(f"{str(path)!r} is glTF version {version}; only version 2 is supported")
    if declared != len(data):
        raise ValueError(
            f"{str(path)!r} is truncated or corrupted: its header declares {declared} bytes "
            f"but the file has {len(data)}; regenerate or re-export it"
        )
    data = _decode_basis_textures(path, data)
    try:
        scene = trimesh.load_scene(trimesh.util.wrap_as_stream(data), file_type="glb")
    except Exception as error:
        raise ValueError(f"{str(path)!r} is a malformed glTF binary: {error}") from error
    if sum(len(mesh.faces) for _, mesh, _ in scene_meshes(scene)) == 0:
        raise ValueError(f"{str(path)!r} contains no triangle meshes; nothing to render or walk on")
    return scene


def _decode_basis_textures(path: Path, data: bytes) -> bytes:
    """The file's bytes with Basis Universal textures as PNG, from the decoded cache if there.

    A file without Basis textures is returned as is. A cache folder that cannot be written
    (read-only home, full disk) only costs the decoding again next time.
    """
    if len(data) < 20 or data[16:20] != b"JSON":
        return data  # no JSON chunk first: trimesh reports the problem
    (length,) = struct.unpack_from("<I", data, 12)
    try:
        header = json.loads(data[20 : 20 + length])
    except ValueError:
        return data  # trimesh reports the problem
    if not has_basis_textures(header):
        return data
    key = hashlib.sha256(data).hexdigest()
    cached = decoded_texture_dir() / f"{key}.glb"
    if cached.is_file():
        decoded = cached.read_bytes()
        intact = len(decoded) >= 12 and decoded[:4] == b"glTF"
        if intact and struct.unpack_from("<I", decoded, 8)[0] == len(decoded):
            return decoded
    try:
        decoded = decode_basis_textures(data)
    except ValueError as error:
        raise ValueError(
            f"{str(path)!r} has Basis Universal (KTX2, KHR_texture_basisu) textures that cannot "
            f"be decoded: {error}; re-export the file, or convert its textures to PNG/JPEG"
        ) from None
    try:
        _write_atomically(decoded, cached)
    except OSError:
        pass  # the cache is an optimisation; the decoded bytes are good either way
    return decoded


def _read_json(path: Path) -> dict:
    try:
        config = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{str(path)!r} is not valid JSON: {error}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{str(path)!r} must hold a JSON object, got {type(config).__name__}")
    return config


def habitat_up_front(path: str | Path) -> tuple[np.ndarray, np.ndarray, Path] | None:
    """The up and front vectors of a scene file from the Habitat configs beside it, if any.

    Looked up as Habitat resolves a stage: ``<name>.stage_config.json`` beside the file (``<name>``
    the file name without ``.glb``, or without ``.basis.glb``) with keys ``"up"`` and ``"front"``;
    else the ``stages.default_attributes`` of a ``*.scene_dataset_config.json`` in the file's
    folder or the two above it (the nearest folder that has one). A missing ``"front"`` is
    ``(0, 0, -1)``, or ``(0, 1, 0)`` when ``"up"`` is along z.

    Args:
        path: the scene file.

    Returns:
        ``(up, front, config path)`` with (3,) float64 unit vectors in the file's frame, or
        ``None`` when no config names an up vector.

    Raises:
        ValueError: a config that is not valid JSON, or whose up / front are not two orthogonal
            non-zero 3-vectors; the message names the file.
    """
    path = Path(path)
    stems = {path.name.removesuffix(".glb"), path.name.removesuffix(".basis.glb")}
    for stem in sorted(stems):
        stage = path.with_name(f"{stem}.stage_config.json")
        if stage.is_file():
            config = _read_json(stage)
            if "up" in config:
                return (*_up_front(config, stage), stage)
    for folder in list(path.resolve().parents)[:_DATASET_CONFIG_LEVELS]:
        datasets = sorted(folder.glob("*.scene_dataset_config.json"))
        for dataset in datasets:
            defaults = _read_json(dataset).get("stages", {}).get("default_attributes", {})
            if "up" in defaults:
                return (*_up_front(defaults, dataset), dataset)
        if datasets:
            return None
    return None


def _up_front(config: dict, source: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        up = np.asarray(config["up"], dtype=np.float64)
        default_front = (0.0, 1.0, 0.0) if up.shape == (3,) and abs(up[2]) > abs(up[1]) else None
        front = np.asarray(config.get("front", default_front or (0.0, 0.0, -1.0)), np.float64)
    except (TypeError, ValueError):
        up = front = np.zeros(0)
    if (
        up.shape != (3,)
        or front.shape != (3,)
        or not (np.isfinite(up).all() and np.isfinite(front).all())
        or min(np.linalg.norm(up), np.linalg.norm(front)) == 0
        or abs(up @ front) > 1e-3 * np.linalg.norm(up) * np.linalg.norm(front)
    ):
        raise ValueError(
            f'{str(source)!r}: "up" and "front" must be two orthogonal non-zero 3-vectors, '
            f"got up={config.get('up')!r}, front={config.get('front')!r}"
        )
    return up / np.linalg.norm(up), front / np.linalg.norm(front)


def to_y_up(up: np.ndarray, front: np.ndarray) -> np.ndarray:
    """(4, 4) rotation taking a file's ``up`` to world +y and its ``front`` to world -z.

    Args:
        up: (3,) unit up vector in the file's frame.
        front: (3,) unit front vector, orthogonal to ``up``.
    """
    up, front = np.asarray(up, np.float64), np.asarray(front, np.float64)
    source = np.stack([np.cross(front, up), up, -front])  # rows: file's right, up, back
    transform = np.eye(4)
    transform[:3, :3] = source  # maps right -> +x, up -> +y, back -> +z
    return transform


def load_scene(
    source: str | Path, cache_dir: str | Path | None = None, up_axis: str | None = None
) -> trimesh.Scene:
    """Load a procedural house by id or any ``.glb`` scene file by path, in the y-up world frame.

    Args:
        source: a scene id (``house-{split}-{index:04d}``; generated on first use and cached as
            ``<cache_dir>/<id>.glb``) or the path of a ``.glb`` file (e.g. an HM3D scene).
        cache_dir: folder of generated houses; :func:`default_cache_dir` if ``None``.
        up_axis: up axis of a scene file, one of :data:`UP_AXES` (``"z"`` for Habitat's MP3D and
            HM3D files); ``None`` reads it from Habitat configs beside the file
            (:func:`habitat_up_front`), else ``"y"``. Generated houses are always y-up.

    Returns:
        The scene (y up, metres). Generated houses are always read back from their ``.glb`` so
        that a cached and a freshly generated house are identical.

    Raises:
        ValueError: for an unknown scene id or up axis, a string that is neither an id nor a file,
            a malformed ``.glb`` (see :func:`load_glb`) or Habitat config, or a file taken as
            y-up (no ``up_axis``, no config) that is taller than wide (see the module docstring).
        FileNotFoundError: for a ``.glb`` path that does not exist.
    """
    if up_axis is not None and up_axis not in UP_AXES:
        raise ValueError(f"unknown up_axis {up_axis!r}: allowed are {UP_AXES} (or None)")
    if isinstance(source, str) and not source.lower().endswith(".glb"):
        if source.startswith("house-"):
            parse_scene_id(source)
            path = Path(cache_dir) if cache_dir is not None else default_cache_dir()
            path = path / f"{source}.glb"
            if not path.is_file():
                export_glb(generate_house(source), path)
            return load_glb(path)
        if not Path(source).is_file():
            raise ValueError(
                f"{source!r} is neither a scene id ({_ALLOWED_IDS}) nor an existing .glb file"
            )
    path = Path(source)
    configured = None if up_axis is not None or not path.is_file() else habitat_up_front(path)
    scene = load_glb(path)
    if up_axis is not None:
        scene.apply_transform(to_y_up(*map(np.asarray, _UP_FRONT[up_axis])))
    elif configured is not None:
        scene.apply_transform(to_y_up(configured[0], configured[1]))
    else:
        _refuse_taller_than_wide(scene, path)
    return scene


def _refuse_taller_than_wide(scene: trimesh.Scene, path: Path) -> None:
    width_x, height, width_z = scene_mesh(scene).extents
    if height > _MAX_HEIGHT_TO_WIDTH * min(width_x, width_z):
        raise ValueError(
            f"{str(path)!r} read as y-up is {height:.2f} m tall but only "
            f"{min(width_x, width_z):.2f} m wide (x {width_x:.2f} m, z {width_z:.2f} m): it looks "
            f"like a z-up file (Habitat's MP3D / HM3D scenes are) standing on its side; "
            f"{_UP_AXIS_FIX}"
        )


def scene_meshes(scene: trimesh.Scene) -> list[tuple[str, trimesh.Trimesh, np.ndarray]]:
    """The triangle meshes of a scene with their node transforms.

    Args:
        scene: any trimesh scene.

    Returns:
        ``(node name, mesh in its own frame, (4, 4) float64 node-to-world transform)`` for every
        node holding a mesh with at least one triangle (point clouds and paths are skipped).
    """
    out = []
    for node in scene.graph.nodes_geometry:
        transform, name = scene.graph[node]
        mesh = scene.geometry.get(name)
        if isinstance(mesh, trimesh.Trimesh) and len(mesh.faces) > 0:
            out.append((node, mesh, np.asarray(transform, dtype=np.float64)))
    return out


def scene_mesh(scene: trimesh.Scene) -> trimesh.Trimesh:
    """The whole scene as one untextured world-frame mesh, for navigation and ray casting.

    Args:
        scene: any trimesh scene.

    Returns:
        A mesh with every node's transform applied (no visuals, vertices not merged).

    Raises:
        ValueError: if the scene has no triangles.
    """
    parts = scene_meshes(scene)
    if not parts:
        raise ValueError("scene has no triangle meshes")
    vertices, faces, offset = [], [], 0
    for _, mesh, transform in parts:
        vertices.append(trimesh.transform_points(mesh.vertices, transform))
        faces.append(np.asarray(mesh.faces) + offset)
        offset += len(mesh.vertices)
    return trimesh.Trimesh(np.concatenate(vertices), np.concatenate(faces), process=False)

"""Basis Universal textures in binary glTF: decoded to PNG for loading, encoded for writing.

HM3D ships each scene as ``<id>.glb`` (JPEG / PNG textures) and as ``<id>.basis.glb``, whose
textures are Basis Universal images: glTF extension ``KHR_texture_basisu`` with images of MIME
type ``image/ktx2`` (the older ``GOOGLE_texture_basis`` with ``.basis`` payloads, MIME type
``image/x-basis``, is read too). trimesh reads neither, so :func:`decode_basis_textures` rewrites
the file's bytes: every Basis image is transcoded to RGBA8 by Binomial's transcoder (the
``opengl-basisu`` package), stored as a PNG in place of the KTX2 payload, and the texture
extension is dropped so that each texture's plain ``source`` names the PNG.
:func:`encode_basis_textures` does the reverse with Binomial's encoder (the ``alktx2`` package),
to compress a scene's textures or to write test files laid out as HM3D's are.

Both keep the rest of the file as it is: the binary chunk is rebuilt view by view, with each
rewritten image's buffer view holding the new payload, so no stale bytes are left behind.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

BASIS_EXTENSIONS = ("KHR_texture_basisu", "GOOGLE_texture_basis")
"""glTF texture extensions whose ``source`` is a Basis Universal image."""
BASIS_MIME_TYPES = ("image/ktx2", "image/x-basis", "image/basis")
"""MIME types of Basis Universal images (KTX2 container, or a raw ``.basis`` file)."""
ENCODE_CODECS = ("etc1s", "uastc")
"""Basis Universal codecs that ``KHR_texture_basisu`` allows (:class:`BasisEncodeConfig`)."""

_GLB_HEADER = struct.Struct("<4sII")  # magic, version, total length
_CHUNK_HEADER = struct.Struct("<I4s")  # length, type
_PNG_COMPRESS_LEVEL = 1
"""zlib level of the decoded PNGs: they are read once per load, so speed beats size."""


@dataclass(frozen=True)
class BasisEncodeConfig:
    """How :func:`encode_basis_textures` compresses textures.

    Attributes:
        codec: ``"etc1s"`` (small files, lower quality; HM3D's choice) or ``"uastc"`` (about 8
            bits per pixel, higher quality).
        quality: Basis Universal quality, in [1, 100]; higher is larger and closer.
        effort: encoder effort, in [0, 10]; higher is slower and somewhat closer.
        threads: encoder threads, >= 1 (the encoder's own default, 0, would take every core).
    """

    codec: str = "etc1s"
    quality: int = 50
    effort: int = 1
    threads: int = 1

    def __post_init__(self) -> None:
        if self.codec not in ENCODE_CODECS:
            raise ValueError(f"codec must be one of {ENCODE_CODECS}, got {self.codec!r}")
        for name, low, high in (("quality", 1, 100), ("effort", 0, 10)):
            value = getattr(self, name)
            if not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
        if not isinstance(self.threads, int) or self.threads < 1:
            raise ValueError(f"threads must be an integer >= 1, got {self.threads!r}")


# ------------------------------------------------------------------------------------ chunks
def split_glb(data: bytes) -> tuple[dict, bytes]:
    """The JSON header and the binary chunk of a binary glTF.

    Args:
        data: the bytes of a ``.glb`` file (version 2).

    Returns:
        ``(header, binary)``: the parsed JSON chunk and the BIN chunk's bytes (``b""`` if the
        file has none).

    Raises:
        ValueError: if the bytes are not a well-formed glTF 2 binary with a JSON chunk first.
    """
    if len(data) < _GLB_HEADER.size + _CHUNK_HEADER.size:
        raise ValueError(f"a .glb has at least 20 bytes, got {len(data)}")
    magic, version, length = _GLB_HEADER.unpack_from(data, 0)
    if magic != b"glTF" or version != 2 or length != len(data):
        raise ValueError(
            f"not a complete glTF 2 binary: magic {magic!r}, version {version}, declared length "
            f"{length} for {len(data)} bytes"
        )
    chunks: dict[bytes, bytes] = {}
    offset = _GLB_HEADER.size
    while offset + _CHUNK_HEADER.size <= len(data):
        size, kind = _CHUNK_HEADER.unpack_from(data, offset)
        start = offset + _CHUNK_HEADER.size
        if start + size > len(data):
            raise ValueError(f"chunk {kind!r} of {size} bytes runs past the end of the file")
        chunks.setdefault(kind, data[start : start + size])
        offset = start + size
    if b"JSON" not in chunks:
        raise ValueError("the .glb has no JSON chunk")
    try:
        header = json.loads(chunks[b"JSON"])
    except ValueError as error:
        raise ValueError(f"the JSON chunk is not valid JSON: {error}") from None
    return header, chunks.get(b"BIN\x00", b"")


def join_glb(header: dict, binary: bytes) -> bytes:
    """A binary glTF from a JSON header and a BIN chunk (padded to 4 bytes as the format asks).

    Args:
        header: the glTF JSON; ``buffers[0].byteLength`` must already be ``len(binary)``.
        binary: the BIN chunk's bytes (``b""``: no BIN chunk is written).
    """
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 4)
    binary += b"\x00" * (-len(binary) % 4)
    body = _CHUNK_HEADER.pack(len(text), b"JSON") + text
    if binary:
        body += _CHUNK_HEADER.pack(len(binary), b"BIN\x00") + binary
    return _GLB_HEADER.pack(b"glTF", 2, _GLB_HEADER.size + len(body)) + body


def has_basis_textures(header: dict) -> bool:
    """Whether a glTF header uses Basis Universal textures (extension or image MIME type)."""
    extensions = set(header.get("extensionsUsed", [])) | set(header.get("extensionsRequired", []))
    mime_types = {image.get("mimeType") for image in header.get("images", [])}
    return bool(extensions & set(BASIS_EXTENSIONS) or mime_types & set(BASIS_MIME_TYPES))


def _replace_images(
    header: dict, binary: bytes, images: dict[int, tuple[bytes, str]]
) -> tuple[dict, bytes]:
    """Put new payloads in place of images' buffer views and rebuild the BIN chunk.

    Args:
        header: glTF JSON (modified in place: buffer views, buffer length, image MIME types).
        binary: the old BIN chunk.
        images: ``image index -> (payload, MIME type)``; each image must live in a buffer view
            of the BIN chunk (buffer 0).

    Returns:
        ``(header, binary)`` with every buffer view of buffer 0 copied in order, 4-byte aligned.
    """
    views = header.get("bufferViews", [])
    replaced = {header["images"][i]["bufferView"]: payload for i, (payload, _) in images.items()}
    parts, offset = [], 0
    for index, view in enumerate(views):
        if view.get("buffer", 0) != 0:
            continue  # an external buffer: not in the BIN chunk
        start = view.get("byteOffset", 0)
        payload = replaced.get(index, binary[start : start + view["byteLength"]])
        pad = -offset % 4
        parts.append(b"\x00" * pad + payload)
        offset += pad
        view["byteOffset"], view["byteLength"] = offset, len(payload)
        offset += len(payload)
    for index, (_, mime_type) in images.items():
        header["images"][index]["mimeType"] = mime_type
    binary = b"".join(parts)
    if header.get("buffers"):
        header["buffers"][0]["byteLength"] = len(binary)
    return header, binary


def _image_payload(header: dict, binary: bytes, index: int) -> bytes:
    image = header["images"][index]
    if "bufferView" not in image:
        raise ValueError(
            f"image {index} is not embedded in the .glb (it names {image.get('uri', '?')!r}); "
            "only images stored in the file's binary chunk are read"
        )
    view = header["bufferViews"][image["bufferView"]]
    if view.get("buffer", 0) != 0:
        raise ValueError(f"image {index} lies in external buffer {view['buffer']}, not the .glb")
    start = view.get("byteOffset", 0)
    return binary[start : start + view["byteLength"]]


def _rewrite(
    data: bytes,
    chosen: Callable[[dict], set[int]],
    convert: Callable[[int, bytes], tuple[bytes, str]],
) -> tuple[dict, bytes, set[int]]:
    """Split a .glb, convert the chosen images' payloads, rebuild it (header still to edit).

    ``convert(image index, payload)`` returns the new payload and its MIME type.
    """
    header, binary = split_glb(data)
    indices = chosen(header)
    images = {
        index: convert(index, _image_payload(header, binary, index)) for index in sorted(indices)
    }
    header, binary = _replace_images(header, binary, images)
    return header, binary, indices


# ------------------------------------------------------------------------------------ decode
def _transcoder():
    """The ``opengl_basisu`` module, or an error that says how to install it."""
    try:
        import opengl_basisu
    except ImportError as error:
        raise ImportError(
            "reading Basis Universal (KTX2 / .basis) textures needs Binomial's transcoder: "
            "pip install opengl-basisu (a dependency of persistent-world; reinstall it with "
            "pip install -e .)"
        ) from error
    return opengl_basisu


def decode_basis_image(payload: bytes) -> np.ndarray:
    """Transcode one KTX2 or ``.basis`` image (level 0, face 0, layer 0) to RGBA8.

    Args:
        payload: the image file's bytes (the container is told by its magic bytes).

    Returns:
        (H, W, 4) uint8 RGBA, rows top to bottom (as a PNG of the same image), values as stored
        (sRGB-encoded colour stays sRGB-encoded, as glTF's PNG textures are).

    Raises:
        ValueError: bytes that are neither a Basis Universal KTX2 nor a ``.basis`` file, or that
            are corrupt.
        ImportError: if the transcoder package is missing (the message says what to install).
    """
    basisu = _transcoder()
    try:
        texture = basisu.open(bytes(payload))
        rgba = texture.transcode(basisu.Target.RGBA8).data
    except basisu.BasisuError as error:
        raise ValueError(f"cannot transcode the Basis Universal image: {error}") from None
    # A .basis file may store its rows bottom to top (its y_flipped flag); KTX2 never does here.
    return np.ascontiguousarray(rgba[::-1] if texture.y_flipped else rgba)


def _basis_sources(header: dict) -> set[int]:
    """Indices of the images that are Basis Universal: extension sources and MIME types."""
    indices = set()
    for texture in header.get("textures", []):
        for name in BASIS_EXTENSIONS:
            extension = texture.get("extensions", {}).get(name)
            if extension is not None and "source" in extension:
                indices.add(int(extension["source"]))
    for index, image in enumerate(header.get("images", [])):
        if image.get("mimeType") in BASIS_MIME_TYPES:
            indices.add(index)
    return indices


def _png(rgba: np.ndarray) -> bytes:
    opaque = bool((rgba[..., 3] == 255).all())
    image = Image.fromarray(rgba[..., :3] if opaque else rgba)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=_PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def decode_basis_textures(data: bytes) -> bytes:
    """A binary glTF with its Basis Universal textures replaced by PNGs that trimesh reads.

    Every image that a ``KHR_texture_basisu`` / ``GOOGLE_texture_basis`` texture names, or whose
    MIME type is one of :data:`BASIS_MIME_TYPES`, is transcoded to RGBA8
    (:func:`decode_basis_image`) and stored as a PNG (RGB when fully opaque) in its own buffer
    view; those textures' ``source`` then names it and the extensions are removed (from the
    textures and from ``extensionsUsed`` / ``extensionsRequired``). Geometry, materials and every
    other byte stay as they are. A file without Basis textures comes back unchanged.

    Args:
        data: the ``.glb`` file's bytes.

    Returns:
        The bytes of the rewritten ``.glb``.

    Raises:
        ValueError: a malformed file, an image outside the file, or a corrupt Basis image (the
            message names the image).
        ImportError: if the transcoder package is missing.
    """
    header, _ = split_glb(data)
    if not has_basis_textures(header):
        return data

    def convert(index: int, payload: bytes) -> tuple[bytes, str]:
        try:
            return _png(decode_basis_image(payload)), "image/png"
        except ValueError as error:
            raise ValueError(f"image {index}: {error}") from None

    header, binary, _ = _rewrite(data, _basis_sources, convert)
    for texture in header.get("textures", []):
        extensions = texture.get("extensions", {})
        for name in BASIS_EXTENSIONS:
            if name in extensions:
                texture["source"] = extensions.pop(name)["source"]
        if "extensions" in texture and not extensions:
            del texture["extensions"]
    _drop_extension_names(header, BASIS_EXTENSIONS)
    return join_glb(header, binary)


def _drop_extension_names(header: dict, names: tuple[str, ...]) -> None:
    for key in ("extensionsUsed", "extensionsRequired"):
        if key in header:
            header[key] = [name for name in header[key] if name not in names]
            if not header[key]:
                del header[key]


# ------------------------------------------------------------------------------------ encode
def _encoder():
    """The ``alktx2`` module, or an error that says how to install it."""
    try:
        import alktx2
    except ImportError as error:
        raise ImportError(
            "writing Basis Universal (KTX2) textures needs Binomial's encoder: pip install "
            "alktx2 (Python >= 3.11; part of persistent-world's [dev] extra)"
        ) from error
    return alktx2


def encode_basis_image(rgba: np.ndarray, config: BasisEncodeConfig | None = None) -> bytes:
    """Compress one image to a Basis Universal KTX2 file (one level, sRGB, rows top to bottom).

    Args:
        rgba: (H, W, 3) or (H, W, 4) uint8 image, rows top to bottom.
        config: codec and effort; the default :class:`BasisEncodeConfig` if ``None``.

    Returns:
        The KTX2 file's bytes.

    Raises:
        ValueError: for an image that is not (H, W, 3|4) uint8.
        ImportError: if the encoder package is missing.
    """
    config = config or BasisEncodeConfig()
    rgba = np.asarray(rgba)
    if rgba.ndim != 3 or rgba.shape[2] not in (3, 4) or rgba.dtype != np.uint8:
        raise ValueError(
            f"rgba must be an (H, W, 3) or (H, W, 4) uint8 image, got shape {rgba.shape} and "
            f"dtype {rgba.dtype}"
        )
    alpha = rgba.shape[2] == 4 and not (rgba[..., 3] == 255).all()
    if rgba.shape[2] == 3:
        rgba = np.concatenate([rgba, np.full((*rgba.shape[:2], 1), 255, np.uint8)], axis=2)
    height, width = rgba.shape[:2]
    return _encoder().encode_raw_rgba_to_ktx2(
        np.ascontiguousarray(rgba).tobytes(),
        width,
        height,
        has_alpha=alpha,
        codec=config.codec,
        quality=config.quality,
        effort=config.effort,
        threads=config.threads,
        srgb=True,
    )


def encode_basis_textures(data: bytes, config: BasisEncodeConfig | None = None) -> bytes:
    """A binary glTF whose embedded PNG / JPEG textures are re-encoded as Basis Universal KTX2.

    The layout is HM3D's ``.basis.glb``: each texture's image moves to
    ``extensions.KHR_texture_basisu.source`` (no plain ``source`` left, so the extension is
    listed in both ``extensionsUsed`` and ``extensionsRequired``) and each image holds a KTX2
    payload of MIME type ``image/ktx2``.

    Args:
        data: the ``.glb`` file's bytes, e.g. from ``scene.export(file_type="glb")``.
        config: codec and effort; the default :class:`BasisEncodeConfig` if ``None``.

    Returns:
        The bytes of the rewritten ``.glb``.

    Raises:
        ValueError: a malformed file or an image outside the file.
        ImportError: if the encoder package is missing.
    """
    config = config or BasisEncodeConfig()

    def chosen(header: dict) -> set[int]:
        return {
            index
            for index, image in enumerate(header.get("images", []))
            if image.get("mimeType") in ("image/png", "image/jpeg")
        }

    def convert(index: int, payload: bytes) -> tuple[bytes, str]:
        with Image.open(io.BytesIO(payload)) as image:
            rgba = np.asarray(image.convert("RGBA"))
        return encode_basis_image(rgba, config), "image/ktx2"

    header, binary, encoded = _rewrite(data, chosen, convert)
    if not encoded:
        return data
    for texture in header.get("textures", []):
        if texture.get("source") in encoded:
            extensions = texture.setdefault("extensions", {})
            extensions["KHR_texture_basisu"] = {"source": texture.pop("source")}
    for key in ("extensionsUsed", "extensionsRequired"):
        names = header.setdefault(key, [])
        if "KHR_texture_basisu" not in names:
            names.append("KHR_texture_basisu")
    return join_glb(header, binary)

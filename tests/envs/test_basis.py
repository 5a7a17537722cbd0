"""Basis Universal (KTX2) textures in .glb: decoding, the decoded cache, renders against PNG."""

import hashlib
import io
import json
import struct
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from envs.embedded.render import Renderer, egl_available
from envs.embedded.scenes import (
    BasisEncodeConfig,
    decode_basis_image,
    decode_basis_textures,
    decoded_texture_dir,
    encode_basis_image,
    encode_basis_textures,
    export_glb,
    generate_house,
    generate_layout,
    load_glb,
    load_scene,
)
from envs.embedded.scenes.basis import split_glb
from worldsim.geometry import pose_from_position_yaw

alktx2 = pytest.importorskip("alktx2", reason="the Basis Universal encoder writes the test files")

HOUSE = "house-val-0002"


@pytest.fixture(autouse=True)
def cache_root(tmp_path, monkeypatch):
    """Every test gets its own cache root, so decoded files never leak between tests."""
    root = tmp_path / "cache"
    monkeypatch.setenv("PERSISTENT_WORLD_CACHE", str(root))
    return root


def _small_house(texture_size):
    """The house with every texture resampled to ``texture_size`` squared (fast to encode)."""
    house = generate_house(HOUSE)
    for geometry in house.geometry.values():
        material = geometry.visual.material
        if material.baseColorTexture is not None:
            image = material.baseColorTexture.convert("RGB")
            material.baseColorTexture = image.resize((texture_size, texture_size))
    return house


@pytest.fixture(scope="module")
def png_glb(tmp_path_factory):
    """A house with 64-pixel PNG textures, as .glb bytes."""
    path = tmp_path_factory.mktemp("png") / "house.glb"
    return export_glb(_small_house(64), path).read_bytes()


@pytest.fixture(scope="module")
def basis_glb(png_glb):
    """The same house with ETC1S KTX2 textures, laid out as HM3D's .basis.glb."""
    return encode_basis_textures(png_glb, BasisEncodeConfig(codec="etc1s"))


def _images(data):
    """Every embedded image's payload and MIME type, in image order."""
    header, binary = split_glb(data)
    out = []
    for image in header["images"]:
        view = header["bufferViews"][image["bufferView"]]
        start = view.get("byteOffset", 0)
        out.append((binary[start : start + view["byteLength"]], image["mimeType"]))
    return out


def _pooled_psnr(a, b):
    """PSNR in dB of uint8 arrays with the squared error pooled over every value."""
    error = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10.0 * np.log10(255.0**2 / error)


def _room_views(renderer, scene):
    """RGB renders from the centre of every room, two headings each: (2R, H, W, 3)."""
    renderer.load_scene(scene)
    views = []
    for room in generate_layout(HOUSE).rooms:
        for yaw in (0.4, 2.5):
            position = torch.tensor([room.center[0], 0.0, room.center[1]], dtype=torch.float64)
            pose = pose_from_position_yaw(position, torch.tensor(yaw, dtype=torch.float64), 1.25)
            views.append(renderer.render(pose.numpy())[0])
    return np.stack(views)


# ------------------------------------------------------------------------------------- layout
def test_encoded_file_is_laid_out_as_hm3d_basis_glb(png_glb, basis_glb):
    header, _ = split_glb(basis_glb)
    assert header["extensionsUsed"] == ["KHR_texture_basisu"]
    assert header["extensionsRequired"] == ["KHR_texture_basisu"]
    assert all("source" not in texture for texture in header["textures"])
    sources = sorted(t["extensions"]["KHR_texture_basisu"]["source"] for t in header["textures"])
    assert sources == list(range(len(header["images"])))
    payloads = _images(basis_glb)
    assert {mime for _, mime in payloads} == {"image/ktx2"}
    assert all(payload[:12] == b"\xabKTX 20\xbb\r\n\x1a\n" for payload, _ in payloads)
    # Geometry bytes are kept: every non-image buffer view holds the same bytes as before.
    before, before_binary = split_glb(png_glb)
    after, after_binary = split_glb(basis_glb)
    image_views = {image["bufferView"] for image in before["images"]}
    for index, (old, new) in enumerate(
        zip(before["bufferViews"], after["bufferViews"], strict=True)
    ):
        if index not in image_views:
            old_bytes = before_binary[old.get("byteOffset", 0) :][: old["byteLength"]]
            assert after_binary[new["byteOffset"] :][: new["byteLength"]] == old_bytes


def test_decoding_restores_plain_gltf_and_is_the_reference_transcode(basis_glb):
    decoded = decode_basis_textures(basis_glb)
    header, _ = split_glb(decoded)
    assert "extensionsUsed" not in header and "extensionsRequired" not in header
    assert all("extensions" not in texture for texture in header["textures"])
    assert sorted(texture["source"] for texture in header["textures"]) == list(
        range(len(header["images"]))
    )
    for (ktx2, _), (png, mime) in zip(_images(basis_glb), _images(decoded), strict=True):
        assert mime == "image/png"
        ours = np.asarray(Image.open(io.BytesIO(png)).convert("RGBA"))
        # The encoder package's own decoder is an independent build of Binomial's transcoder.
        reference, _ = alktx2.decode_ktx2_to_bytes(ktx2, format="png")
        np.testing.assert_array_equal(ours, np.asarray(Image.open(io.BytesIO(reference))))
        np.testing.assert_array_equal(ours, decode_basis_image(ktx2))
    assert decode_basis_textures(decoded) is decoded  # nothing left to decode


def test_rgba_round_trip_keeps_orientation_and_colour():
    # Four flat quadrants: a flip, a transpose or a channel swap would move or change them.
    image = np.zeros((64, 32, 3), dtype=np.uint8)
    image[:32, :16], image[:32, 16:] = (250, 10, 10), (10, 250, 10)
    image[32:, :16], image[32:, 16:] = (10, 10, 250), (250, 250, 250)
    for codec in ("etc1s", "uastc"):
        rgba = decode_basis_image(encode_basis_image(image, BasisEncodeConfig(codec=codec)))
        assert rgba.shape == (64, 32, 4) and rgba.dtype == np.uint8
        assert (rgba[..., 3] == 255).all()
        inner = (slice(4, 28), slice(4, 12))  # away from the quadrant borders' 4x4 blocks
        for rows, cols in ((0, 0), (0, 16), (32, 0), (32, 16)):
            block = rgba[rows + inner[0].start : rows + inner[0].stop, cols + 4 : cols + 12, :3]
            expected = image[rows + 8, cols + 8]
            # ETC1S keeps flat colours to within a few levels of 255.
            assert np.abs(block.astype(int) - expected).max() <= 12, (codec, rows, cols)


# ------------------------------------------------------------------------------------- renders
def _check_renders_against_the_png_original(folder, png_glb, basis_glb, size):
    """PSNR of the .basis.glb's renders against the PNG original's, and of untextured ones."""
    png_path, basis_path = folder / "house.glb", folder / "house.basis.glb"
    png_path.write_bytes(png_glb)
    basis_path.write_bytes(basis_glb)
    original, basis = load_scene(png_path), load_scene(basis_path)
    untextured = load_scene(basis_path)
    for geometry in untextured.geometry.values():
        geometry.visual.material.baseColorTexture = None
    renderer = Renderer(size, size)
    reference = _room_views(renderer, original)
    basis_views = _room_views(renderer, basis)
    untextured_views = _room_views(renderer, untextured)
    renderer.release()
    # The codec's own loss on the textures, pooled over all of them.
    originals, decoded = [], []
    for (png, _), (ktx2, _) in zip(_images(png_glb), _images(basis_glb), strict=True):
        originals.append(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).ravel())
        decoded.append(decode_basis_image(ktx2)[..., :3].ravel())
    codec_psnr = _pooled_psnr(np.concatenate(decoded), np.concatenate(originals))
    rendered_psnr = _pooled_psnr(basis_views, reference)
    control_psnr = _pooled_psnr(untextured_views, reference)
    # Loading adds at most 2 dB to what the codec itself loses (filtering averages it down).
    assert rendered_psnr >= codec_psnr - 2.0, (rendered_psnr, codec_psnr)
    # The codecs keep 30-38 dB on the textures; mipmapped renders average that to 44-52 dB.
    assert rendered_psnr > 40.0, rendered_psnr
    assert control_psnr < rendered_psnr - 10.0, (control_psnr, rendered_psnr)


@pytest.mark.skipif(not egl_available(), reason="no headless OpenGL context through EGL")
def test_basis_house_renders_as_its_png_original_and_untextured_does_not(
    tmp_path, png_glb, basis_glb
):
    _check_renders_against_the_png_original(tmp_path, png_glb, basis_glb, size=64)


@pytest.mark.slow
@pytest.mark.skipif(not egl_available(), reason="no headless OpenGL context through EGL")
@pytest.mark.parametrize("codec", ["etc1s", "uastc"])
def test_full_size_textures_render_as_the_png_original_at_128(tmp_path, codec):
    png_glb = export_glb(generate_house(HOUSE), tmp_path / "full.glb").read_bytes()
    basis_glb = encode_basis_textures(png_glb, BasisEncodeConfig(codec=codec))
    _check_renders_against_the_png_original(tmp_path, png_glb, basis_glb, size=128)


# ------------------------------------------------------------------------------------- cache
def test_decoded_file_is_cached_by_content_and_a_broken_entry_is_redone(
    tmp_path, cache_root, png_glb, basis_glb
):
    path = tmp_path / "scan.basis.glb"
    path.write_bytes(basis_glb)
    first = load_glb(path)
    entry = decoded_texture_dir() / f"{hashlib.sha256(basis_glb).hexdigest()}.glb"
    assert entry.is_relative_to(cache_root) and entry.read_bytes() == decode_basis_textures(
        basis_glb
    )
    # The entry is what the next load reads: put the PNG original there and it comes back.
    entry.write_bytes(png_glb)
    cached = load_glb(path)
    plain = tmp_path / "plain.glb"
    plain.write_bytes(png_glb)
    original = load_glb(plain)
    for name, geometry in cached.geometry.items():
        texture = geometry.visual.material.baseColorTexture
        if texture is not None:
            expected = original.geometry[name].visual.material.baseColorTexture
            np.testing.assert_array_equal(np.asarray(texture), np.asarray(expected))
    # A truncated entry is decoded again and replaced.
    entry.write_bytes(png_glb[:100])
    again = load_glb(path)
    assert entry.read_bytes() == decode_basis_textures(basis_glb)
    assert sorted(again.geometry) == sorted(first.geometry)


def test_unwritable_cache_still_loads(tmp_path, monkeypatch, basis_glb):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache root should be")
    monkeypatch.setenv("PERSISTENT_WORLD_CACHE", str(blocker))
    path = tmp_path / "scan.basis.glb"
    path.write_bytes(basis_glb)
    assert len(load_glb(path).geometry) > 0


# ------------------------------------------------------------------------------------- errors
def test_missing_transcoder_names_the_package_to_install(tmp_path, monkeypatch, basis_glb):
    monkeypatch.setitem(sys.modules, "opengl_basisu", None)  # makes the import fail
    path = tmp_path / "scan.basis.glb"
    path.write_bytes(basis_glb)
    with pytest.raises(ImportError, match="pip install opengl-basisu"):
        load_glb(path)


def test_corrupt_basis_image_is_reported_with_path_and_image(tmp_path, basis_glb):
    header, binary = split_glb(basis_glb)
    view = header["bufferViews"][header["images"][0]["bufferView"]]
    start = view["byteOffset"]
    corrupt = bytearray(binary)
    corrupt[start + 12 : start + view["byteLength"]] = bytes(view["byteLength"] - 12)  # zeros
    data = bytearray(basis_glb)
    data[len(basis_glb) - len(binary) :] = corrupt
    path = tmp_path / "scan.basis.glb"
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"scan\.basis\.glb.*cannot be decoded: image 0"):
        load_glb(path)


def test_ktx2_image_outside_the_file_is_refused(tmp_path, basis_glb):
    header, binary = split_glb(basis_glb)
    header["images"][0] = {"uri": "textures/wall.ktx2", "mimeType": "image/ktx2"}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 4)
    body = struct.pack("<I4s", len(text), b"JSON") + text
    body += struct.pack("<I4s", len(binary), b"BIN\x00") + binary
    path = tmp_path / "scan.basis.glb"
    path.write_bytes(struct.pack("<4sII", b"glTF", 2, 12 + len(body)) + body)
    with pytest.raises(ValueError, match=r"image 0 is not embedded.*textures/wall\.ktx2"):
        load_glb(path)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"codec": "bc7"}, "codec"), ({"quality": 0}, "quality"), ({"effort": 11}, "effort"),
     ({"threads": 0}, "threads")],
)  # fmt: skip
def test_encode_settings_out_of_range_are_rejected_by_name(kwargs, field):
    with pytest.raises(ValueError, match=field):
        BasisEncodeConfig(**kwargs)

"""Memories: lifting vs. a per-pixel loop, max-pooling vs. a dict reference, retrieval cases."""

import math

import pytest
import torch

from worldsim.geometry import intrinsics_from_hfov, pose_from_position_yaw
from worldsim.memory import (
    BEVMap,
    BEVMapConfig,
    FeatureMap3D,
    FeatureMapConfig,
    FrameBank,
    FrameBankConfig,
    ImageMemory,
    ImageMemoryConfig,
    NoMemory,
    PositionEncoding,
    build_memory,
)
from worldsim.memory.base import Frames, lift_frames, sinusoidal_embedding
from worldsim.memory.voxel_grid import SparseMaxGrid
from worldsim.models.encoders import PooledColorEncoder

SIZE = 16  # pixels per side of the test frames
# Box room, metres; walls off the voxel grids used below so no point sits on a voxel boundary.
ROOM = (torch.tensor([-2.03, -0.013, -2.47]), torch.tensor([2.41, 2.61, 2.09]))


def box_room_frames(positions, yaws, size=SIZE):
    """RGB-D of cameras inside the box room, computed analytically.

    Depth: the exit distance of each pixel's ray (z = 1 in the camera frame, so the ray
    parameter is the z-depth). Colour: a smooth function of the hit point, so the same surface
    gives the same colour from every view.
    """
    positions = torch.as_tensor(positions, dtype=torch.float32)
    yaws = torch.as_tensor(yaws, dtype=torch.float32)
    poses = pose_from_position_yaw(positions, yaws)  # (T, 4, 4)
    k = intrinsics_from_hfov(90.0, size, size)
    v, u = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    rays_cam = torch.stack(
        [(u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1], torch.ones_like(u)], -1
    )
    rays = rays_cam @ poses[:, None, :3, :3].transpose(-1, -2)  # (T, H, W, 3)
    origin = poses[:, None, None, :3, 3]
    bound = torch.where(rays > 0, ROOM[1], ROOM[0])
    depth = ((bound - origin) / rays).amin(dim=-1)  # (T, H, W)
    hit = origin + depth[..., None] * rays
    rgb = 0.5 + 0.5 * torch.sin(
        torch.stack(
            [1.3 * hit[..., 0] + hit[..., 1], 2.1 * hit[..., 2] - hit[..., 1], 0.7 * hit.sum(-1)], 1
        )
    )
    return rgb, depth[:, None], k.expand(len(yaws), 3, 3), poses


def batch(*frames):
    """Stack per-row frame tuples into (B, T, ...) tensors."""
    return [torch.stack(parts) for parts in zip(*frames, strict=True)]


def encoder(stride=2):
    return PooledColorEncoder(stride=stride, num_frequencies=1)


def feature_map(**config):
    return FeatureMap3D(FeatureMapConfig(**config), encoder=encoder())


YAWS = [0.0, 0.5 * math.pi, math.pi, 1.5 * math.pi]
CENTRE = [[0.1, 0.0, -0.2]] * 4


# Lifting ------------------------------------------------------------------------------------


def test_lifting_agrees_with_a_per_pixel_loop():
    rgb, depth, k, poses = box_room_frames(CENTRE[:2], YAWS[:2], size=8)
    depth = depth.clone()
    depth[0, 0, 0, 0] = float("nan")  # cell (0, 0): one pixel NaN
    depth[0, 0, 0:2, 2:4] = torch.tensor([[-1.0, 0.0], [float("inf"), 20.0]])  # cell (0, 1) empty
    depth[1, 0, 4, 4] = 0.0  # cell (2, 2): one pixel without a hit
    frames = Frames(rgb, depth[:, 0], k, poses, torch.zeros(2, dtype=torch.long), torch.arange(2))
    lifted = lift_frames(frames, encoder(), "median", max_depth=10.0)
    assert lifted.points.shape == (2, 4, 4, 3)
    for n in range(2):
        for i in range(4):
            for j in range(4):
                values = [
                    float(depth[n, 0, 2 * i + a, 2 * j + b]) for a in range(2) for b in range(2)
                ]
                values = sorted(d for d in values if math.isfinite(d) and 0 < d <= 10.0)
                if not values:
                    assert not lifted.point_valid[n, i, j]
                    continue
                d = values[(len(values) - 1) // 2]  # lower median
                u, v = (2 * j + 1.0), (2 * i + 1.0)  # centre of the 2x2 pixel block
                x = (u - float(k[n, 0, 2])) / float(k[n, 0, 0]) * d
                y = (v - float(k[n, 1, 2])) / float(k[n, 1, 1]) * d
                world = poses[n] @ torch.tensor([x, y, d, 1.0])
                assert lifted.point_valid[n, i, j]
                # float32 unprojection of metre-scale coordinates
                torch.testing.assert_close(lifted.points[n, i, j], world[:3], atol=1e-5, rtol=0)
    assert not lifted.point_valid[0, 0, 1]


def test_nearest_depth_sampling_reads_the_cell_centre_pixel():
    rgb, depth, k, poses = box_room_frames(CENTRE[:1], YAWS[:1], size=8)
    frames = Frames(rgb, depth[:, 0], k, poses, torch.zeros(1, dtype=torch.long), torch.arange(1))
    lifted = lift_frames(frames, encoder(), "nearest", max_depth=10.0)
    camera_z = (lifted.points[0] - poses[0, :3, 3]) @ poses[0, :3, 2]  # (h, w) z-depth
    # float32 rotation of metre-scale points
    torch.testing.assert_close(camera_z, depth[0, 0, 1::2, 1::2], atol=1e-5, rtol=0)


# Max-pooled map vs. a dense reference -------------------------------------------------------


def reference_map(memory, rgb, depth, k, poses, valid=None):
    """Dict (row, i, j, k) -> max feature, by brute force over lifted cells."""
    b, t = rgb.shape[:2]
    ref = {}
    for row in range(b):
        for step in range(t):
            if valid is not None and not valid[row, step]:
                continue
            frames = Frames(
                rgb[row, step : step + 1],
                depth[row, step : step + 1, 0],
                k[row, step : step + 1],
                poses[row, step : step + 1],
                torch.zeros(1, dtype=torch.long),
                torch.zeros(1, dtype=torch.long),
            )
            lifted = lift_frames(frames, memory.encoder, "median", memory.config.max_depth)
            for i in range(lifted.points.shape[1]):
                for j in range(lifted.points.shape[2]):
                    if not lifted.point_valid[0, i, j]:
                        continue
                    voxel = tuple(
                        math.floor(c / memory.config.voxel_size)
                        for c in lifted.points[0, i, j].tolist()
                    )
                    key = (row, *voxel)
                    feat = lifted.features[0, :, i, j]
                    ref[key] = feat if key not in ref else torch.maximum(ref[key], feat)
    return ref


def map_as_dict(memory):
    rows, centres, features = memory.cells()
    cells = torch.floor(centres / memory.config.voxel_size).long()
    return {(int(r), *c.tolist()): f for r, c, f in zip(rows, cells, features, strict=True)}


def test_feature_map_equals_dense_reference_over_a_trajectory():
    row0 = box_room_frames([[0.0, 0, 0], [0.3, 0, -0.2], [0.3, 0, -0.2]], [0.0, 0.4, 2.0])
    row1 = box_room_frames([[-1.0, 0, 1.0], [-0.5, 0, 0.5], [0.0, 0, 0.0]], [3.0, 1.0, -1.2])
    rgb, depth, k, poses = batch(row0, row1)
    valid = torch.tensor([[True, True, True], [True, False, True]])
    memory = feature_map(voxel_size=0.2)
    memory.reset(2)
    memory.update(rgb, depth, k, poses, valid)
    ref = reference_map(memory, rgb, depth, k, poses, valid)
    got = map_as_dict(memory)
    assert set(got) == set(ref)
    for key, value in ref.items():
        assert torch.equal(got[key], value), key  # max is exact
    assert memory.num_cells().tolist() == [sum(key[0] == r for key in ref) for r in range(2)]


def test_same_view_twice_does_not_grow_the_map():
    rgb, depth, k, poses = batch(box_room_frames(CENTRE[:2], YAWS[:2]))
    memory = feature_map()
    memory.reset(1)
    memory.update(rgb, depth, k, poses)
    before = map_as_dict(memory)
    memory.update(rgb, depth, k, poses)
    after = map_as_dict(memory)
    assert set(after) == set(before)
    assert all(torch.equal(after[key], before[key]) for key in before)


def test_voxel_features_do_not_depend_on_frame_order():
    rgb, depth, k, poses = box_room_frames(
        [[0.0, 0, 0], [0.5, 0, 0.3], [-0.4, 0, -0.8], [1.0, 0, 1.0]], [0.0, 1.0, 2.5, -2.0]
    )
    forward = feature_map(voxel_size=0.15)
    forward.reset(1)
    forward.update(*[x[None] for x in (rgb, depth, k, poses)])
    shuffled = feature_map(voxel_size=0.15)
    shuffled.reset(1)
    for order in ([3, 1], [0], [2]):  # other order, split over several updates
        shuffled.update(*[x[order][None] for x in (rgb, depth, k, poses)])
    a, b = map_as_dict(forward), map_as_dict(shuffled)
    assert set(a) == set(b) and all(torch.equal(a[key], b[key]) for key in a)


def test_sparse_grid_merges_like_a_dict_over_many_inserts():
    generator = torch.Generator().manual_seed(0)
    grid = SparseMaxGrid(axes=3, channels=2, max_cells=10_000, batch_size=3)
    ref = {}
    for step in range(6):
        rows = torch.randint(0, 3, (200,), generator=generator)
        cells = torch.randint(-4, 4, (200, 3), generator=generator)
        features = torch.randn(200, 2, generator=generator)
        grid.insert(rows, cells, features, torch.full((200,), step))
        for r, c, f in zip(rows.tolist(), cells.tolist(), features, strict=True):
            key = (r, *c)
            ref[key] = f if key not in ref else torch.maximum(ref[key], f)
    rows, cells = grid.decode(grid.keys)
    assert torch.all(grid.keys[1:] > grid.keys[:-1])  # the index stays sorted and unique
    got = {
        (int(r), *c.tolist()): f for r, c, f in zip(rows, cells, grid.cell_features(), strict=True)
    }
    assert set(got) == set(ref) and all(torch.equal(got[key], ref[key]) for key in ref)


def test_full_map_evicts_the_least_recently_observed_voxels():
    grid = SparseMaxGrid(axes=3, channels=1, max_cells=4, batch_size=2)
    cells = torch.tensor([[i, 0, 0] for i in range(6)])
    # row 0 sees cells 0..5 at times 0..5, then cell 0 again at time 6; row 1 only cells 0, 1.
    grid.insert(torch.zeros(6, dtype=torch.long), cells, torch.ones(6, 1), torch.arange(6))
    grid.insert(torch.zeros(1, dtype=torch.long), cells[:1], torch.ones(1, 1), torch.tensor([6]))
    grid.insert(torch.ones(2, dtype=torch.long), cells[:2], torch.ones(2, 1), torch.arange(2))
    rows, kept = grid.decode(grid.keys)
    assert grid.row_counts().tolist() == [4, 2]
    # 0..5 leaves 2..5; cell 0 seen again at time 6 re-enters and pushes out 2, the oldest
    assert kept[rows == 0, 0].tolist() == [0, 3, 4, 5]
    assert kept[rows == 1, 0].tolist() == [0, 1]


def test_cell_coordinates_out_of_range_raise():
    grid = SparseMaxGrid(axes=3, channels=1, max_cells=4, batch_size=1)
    with pytest.raises(ValueError, match="too far from the world origin"):
        grid.insert(
            torch.zeros(1, dtype=torch.long),
            torch.tensor([[40_000, 0, 0]]),
            torch.ones(1, 1),
            torch.zeros(1, dtype=torch.long),
        )


def test_select_copies_rows_without_aliasing():
    rows = [box_room_frames(CENTRE[:1], [yaw]) for yaw in YAWS[:3]]
    rgb, depth, k, poses = batch(*rows)
    memory = feature_map()
    memory.reset(3)
    memory.update(rgb, depth, k, poses)
    copy = memory.select(torch.tensor([2, 2, 0]))
    original = map_as_dict(memory)
    expected = {}
    for new_row, old_row in enumerate([2, 2, 0]):
        expected.update(
            {(new_row, *key[1:]): v for key, v in original.items() if key[0] == old_row}
        )
    got = map_as_dict(copy)
    assert set(got) == set(expected) and all(torch.equal(got[key], expected[key]) for key in got)
    memory.update(*batch(*[box_room_frames(CENTRE[:1], [YAWS[3]])] * 3))  # mutate the original
    assert map_as_dict(copy).keys() == got.keys()
    assert copy.grid.features.data_ptr() != memory.grid.features.data_ptr()


# Tokens --------------------------------------------------------------------------------------


def test_sinusoidal_embedding_hand_computed():
    coords = torch.tensor([[0.25, -1.0]])
    embedding = sinusoidal_embedding(
        coords, num_frequencies=2, min_wavelength=1.0, max_wavelength=4.0
    )
    x, y = 0.25, -1.0
    expected = [
        math.sin(2 * math.pi * x),
        math.sin(2 * math.pi * x / 4),
        math.cos(2 * math.pi * x),
        math.cos(2 * math.pi * x / 4),
        math.sin(2 * math.pi * y),
        math.sin(2 * math.pi * y / 4),
        math.cos(2 * math.pi * y),
        math.cos(2 * math.pi * y / 4),
    ]
    # float32 sin / cos
    torch.testing.assert_close(embedding[0], torch.tensor(expected), atol=1e-6, rtol=0)


def test_tokens_select_the_nearest_voxels_and_embed_camera_relative_positions():
    rgb, depth, k, poses = batch(box_room_frames(CENTRE, YAWS))
    position = PositionEncoding(num_frequencies=3, min_wavelength_m=0.5, max_wavelength_m=8.0)
    memory = feature_map(voxel_size=0.25, max_tokens=40, token_radius=2.4, position=position)
    memory.reset(1)
    memory.update(rgb, depth, k, poses)
    target = pose_from_position_yaw(
        torch.tensor([[[1.0, 0.0, 0.5], [0.0, 0.0, 0.0]]]), torch.tensor([[0.3, 1.0]])
    )
    tokens, mask = memory.tokens(target, k[:, :2], (SIZE, SIZE))
    assert tokens.shape == (1, 40, memory.token_dim) and mask.all()
    # Brute force: every voxel, its distance to the nearest target camera, sorted.
    _, centres, features = memory.cells()
    distance = (centres[:, None] - target[0, None, :, :3, 3]).norm(dim=-1).amin(-1)
    candidates = [(float(d), n) for n, d in enumerate(distance) if d <= 2.4]
    chosen = [n for _, n in sorted(candidates)[:40]]
    c = features.shape[1]
    assert torch.equal(tokens[0, :, :c], features[chosen])
    local = (centres[chosen] - target[0, 0, :3, 3]) @ target[0, 0, :3, :3]  # R^T (p - t)
    # float32 rigid transform of metre-scale coordinates, then sin / cos
    torch.testing.assert_close(tokens[0, :, c:], position(local), atol=1e-5, rtol=0)


def test_tokens_are_unchanged_when_the_whole_world_moves_by_whole_voxels():
    voxel = 0.25
    shift = torch.tensor([3 * voxel, 0.0, -5 * voxel])
    frames = box_room_frames(CENTRE[:3], YAWS[:3])
    rgb, depth, k, poses = batch(frames)
    moved = poses.clone()
    moved[..., :3, 3] += shift
    target = poses[:, :1].clone()
    target_moved = moved[:, :1].clone()
    out = []
    for p, t in ((poses, target), (moved, target_moved)):
        memory = feature_map(voxel_size=voxel, max_tokens=None)
        memory.reset(1)
        memory.update(rgb, depth, k, p)
        out.append(memory.tokens(t, k[:, :1], (SIZE, SIZE)))
    assert out[0][0].shape == out[1][0].shape and out[0][1].all() and out[1][1].all()
    # Equal distances may tie-break differently in float32, so compare as sets of tokens:
    # every token has a twin in the other set (float32 centres differ by the shift's rounding).
    gap = torch.cdist(out[0][0][0], out[1][0][0], compute_mode="donot_use_mm_for_euclid_dist")
    assert gap.amin(dim=1).max() < 1e-4 and gap.amin(dim=0).max() < 1e-4


def test_empty_memory_gives_zero_tokens_and_partly_empty_rows_are_masked():
    rgb, depth, k, poses = batch(*[box_room_frames(CENTRE[:1], YAWS[:1])] * 2)
    for memory in (
        feature_map(),
        BEVMap(BEVMapConfig(), encoder=encoder()),
        ImageMemory(ImageMemoryConfig(), encoder=encoder()),
        FrameBank(FrameBankConfig(), encoder=encoder()),
        NoMemory(),
    ):
        memory.reset(2)
        tokens, mask = memory.tokens(poses[:, :1], k[:, :1], (SIZE, SIZE))
        assert tokens.shape == (2, 0, memory.token_dim) and mask.shape == (2, 0)
        if isinstance(memory, NoMemory):
            continue
        memory.update(rgb, depth, k, poses, valid=torch.tensor([[True], [False]]))
        tokens, mask = memory.tokens(poses[:, :1], k[:, :1], (SIZE, SIZE))
        assert tokens.shape[1] > 0 and mask[0].any() and not mask[1].any()
        assert torch.all(tokens[1] == 0)


# Bad input -----------------------------------------------------------------------------------


def test_nan_and_negative_depth_are_masked_like_no_hit():
    rgb, depth, k, poses = batch(box_room_frames(CENTRE[:1], YAWS[:1]))
    zeroed, corrupted = depth.clone(), depth.clone()
    zeroed[..., :4, :] = 0.0
    corrupted[..., :2, :] = float("nan")
    corrupted[..., 2:4, :] = -1.0
    maps = []
    for d in (zeroed, corrupted):
        memory = feature_map()
        memory.reset(1)
        memory.update(rgb, d, k, poses)
        maps.append(map_as_dict(memory))
    assert maps[0].keys() == maps[1].keys()


def test_bad_inputs_raise_clear_errors():
    rgb, depth, k, poses = batch(box_room_frames(CENTRE[:2], YAWS[:2]))
    memory = feature_map()
    with pytest.raises(RuntimeError, match="reset"):
        memory.update(rgb, depth, k, poses)
    memory.reset(1)
    skewed = poses.clone()
    skewed[0, 1, 0, 0] = 2.0
    with pytest.raises(ValueError, match="not a rigid transform"):
        memory.update(rgb, depth, k, skewed)
    with pytest.raises(ValueError, match="batch size 2"):
        memory.update(*[torch.cat([x, x]) for x in (rgb, depth, k, poses)])
    with pytest.raises(ValueError, match="depth must have shape"):
        memory.update(rgb, depth[:, :1], k, poses)
    with pytest.raises(ValueError, match="uint8"):
        memory.update((rgb * 255).to(torch.uint8), depth, k, poses)
    with pytest.raises(ValueError, match="target_cam_to_world has batch 2"):
        memory.tokens(torch.cat([poses, poses]), torch.cat([k, k]), (SIZE, SIZE))
    with pytest.raises(ValueError, match="index values must be in"):
        memory.select(torch.tensor([1]))
    padding = poses.clone()
    padding[0, 1] = float("nan")  # padding frames are never read
    memory.update(rgb, depth, k, padding, valid=torch.tensor([[True, False]]))


def test_build_memory_names_and_config_errors():
    shared = encoder()
    for name in ("none", "feature_map", "image", "bev", "frame_bank"):
        memory = build_memory(name) if name == "none" else build_memory(name, encoder=shared)
        assert memory.token_dim >= 1
    assert build_memory("feature_map", encoder={"name": "pooled_color"}).encoder.stride == 4
    with pytest.raises(ValueError, match="unknown memory 'dino'"):
        build_memory("dino")
    with pytest.raises(ValueError, match="no fields"):
        build_memory("bev", voxels=3)
    with pytest.raises(ValueError, match=r"FeatureMapConfig\.voxel_size"):
        FeatureMapConfig(voxel_size=-1.0)
    with pytest.raises(ValueError, match=r"FrameBankConfig\.max_retrieved"):
        FrameBankConfig(capacity=2, max_retrieved=3)


# Baselines -----------------------------------------------------------------------------------


def test_bev_map_max_pools_over_height():
    rgb, depth, k, poses = batch(box_room_frames(CENTRE[:2], YAWS[:2]))
    memory3d = feature_map(voxel_size=0.3)
    bev = BEVMap(BEVMapConfig(voxel_size=0.3), encoder=encoder())
    for memory in (memory3d, bev):
        memory.reset(1)
        memory.update(rgb, depth, k, poses)
    expected = {}
    for key, value in map_as_dict(memory3d).items():
        cell = (key[0], key[1], key[3])
        expected[cell] = value if cell not in expected else torch.maximum(expected[cell], value)
    assert map_as_dict(bev).keys() == expected.keys()
    assert all(torch.equal(map_as_dict(bev)[c], expected[c]) for c in expected)
    target = poses[:, :1]
    tokens, mask = bev.tokens(target, k[:, :1], (SIZE, SIZE))
    assert tokens.shape == (1, len(expected), bev.token_dim) and mask.all()


def test_frame_bank_retrieves_the_overlapping_frame_and_prefers_recent_ones():
    rgb, depth, k, poses = batch(box_room_frames(CENTRE, YAWS))  # looks at four different walls
    bank = FrameBank(FrameBankConfig(max_retrieved=2, time_penalty=0.01), encoder=encoder())
    bank.reset(1)
    bank.update(rgb, depth, k, poses)
    for index in range(4):
        target = pose_from_position_yaw(
            torch.tensor([[[0.0, 0.0, 0.0]]]), torch.tensor([[YAWS[index] + 0.35]])
        )
        picks, picked = bank.retrieve(target, k[:, :1], (SIZE, SIZE))
        assert int(picks[0, 0]) == index and picked[0, 0]
        # the second pick fills the 0.35 rad the first one misses: the neighbour turned left
        assert int(picks[0, 1]) == (index + 1) % 4
    # The same view again later: equal overlap, so the time penalty picks the recent copy.
    bank.update(rgb[:, :1], depth[:, :1], k[:, :1], poses[:, :1])
    picks, _ = bank.retrieve(poses[:, :1], k[:, :1], (SIZE, SIZE))
    assert int(picks[0, 0]) == 4
    tokens, mask = bank.tokens(poses[:, :1], k[:, :1], (SIZE, SIZE))
    cells = (SIZE // 2) ** 2
    assert tokens.shape == (1, 2 * cells, bank.token_dim)
    # frame 4 covers the whole target view, so nothing else adds coverage: one frame's tokens
    assert mask[0, :cells].all() and not mask[0, cells:].any()


def test_frame_bank_ring_buffer_keeps_the_newest_frames():
    rgb, depth, k, poses = batch(box_room_frames(CENTRE, YAWS))
    bank = FrameBank(FrameBankConfig(capacity=3, max_retrieved=1), encoder=encoder())
    bank.reset(1)
    bank.update(rgb, depth, k, poses)
    time, filled = bank.frame_times()
    assert filled.all() and sorted(time[0].tolist()) == [1, 2, 3]


def test_image_memory_keeps_informative_frames_only():
    rgb, depth, k, poses = batch(box_room_frames(CENTRE * 2, YAWS * 2))
    memory = ImageMemory(ImageMemoryConfig(max_snapshots=8, novelty=0.3), encoder=encoder())
    memory.reset(1)
    memory.update(rgb, depth, k, poses)
    time, filled = memory.snapshot_times()
    assert time[filled].tolist() == [0, 1, 2, 3]  # the second lap adds nothing new
    small = ImageMemory(ImageMemoryConfig(max_snapshots=2, novelty=0.3), encoder=encoder())
    small.reset(1)
    small.update(rgb[:, :4], depth[:, :4], k[:, :4], poses[:, :4])
    assert int(small.num_snapshots()[0]) == 2
    tokens, mask = small.tokens(poses[:, :1], k[:, :1], (SIZE, SIZE))
    assert tokens.shape == (1, 2 * (SIZE // 2) ** 2, small.token_dim) and mask.all()

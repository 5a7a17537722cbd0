"""The persistent world model: camera geometry, 3D feature memory, RGB-D video diffusion.

Dimension letters used in shape comments and docstrings across the project:

    B batch        T frames       C channels     H, W pixels (rows, columns)
    N tokens       D width        M map voxels   K candidates
    E elites       L horizon      A action dims

Conventions (frames, units, actions) are written down once, in :mod:`worldsim.geometry`.
"""

__version__ = "0.1.0"

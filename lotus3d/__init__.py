"""lotus3d: photos to 3D with Lotus depth and normals."""

__version__ = "0.1.0"

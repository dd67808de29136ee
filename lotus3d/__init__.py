"""lotus3d: photos to 3D with Lotus depth and normals."""

"""lotus3d: photos to 3D with Lotus depth and normals."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # `from lotus3d import Scene` without importing the heavy stages at package import
    if name == "Scene":
        from .scene import Scene

        return Scene
    raise AttributeError(f"module 'lotus3d' has no attribute {name!r}")


__all__ = ["Scene", "__version__"]

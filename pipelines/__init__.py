"""End-to-end pipelines composed from the stages in lotus3d/."""

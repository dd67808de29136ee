"""Bundled data: the public-domain Spot cow mesh (see spot_cow/SOURCE.txt) for `lotus3d demo`."""

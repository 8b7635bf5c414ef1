"""imgcluster: sort a folder of images into groups without labels."""

__version__ = "0.1.0"

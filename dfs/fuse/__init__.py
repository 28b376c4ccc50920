"""The FUSE mount: the cluster's namespace as a local directory (mfusepy on libfuse3)."""

"""dfs: a distributed, content-addressed file system."""

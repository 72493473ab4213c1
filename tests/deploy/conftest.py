def pytest_configure(config):
    config.addinivalue_line("markers", "ray_cluster: starts a real multi-node local Ray cluster (ray start x2)")

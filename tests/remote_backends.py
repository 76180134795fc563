"""Every remote backend the contract suite runs on, each as a pytest fixture name.

A backend fixture yields a fresh, empty Remote. Cloud backends start their real server once per
test session (tests/servers.py) and give each test its own bucket or container.
"""

# fixture names, in the order they appear in test ids
REMOTE_BACKENDS = [
    "memory_remote",
    "local_remote",
    "moto_remote",
    "seaweed_remote",
    "azurite_remote",
    "gcs_remote",
]

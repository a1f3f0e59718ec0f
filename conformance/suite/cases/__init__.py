"""The cases, one module per part of the spec; importing this registers them all."""

from suite.cases import (  # noqa: F401 - registration by import
    runtime_ops, config_root_mounts, config_process, hooks, linux_namespaces,
    linux_devices, linux_cgroups, linux_misc,
)

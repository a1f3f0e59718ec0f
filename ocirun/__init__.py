"""ocirun: an OCI runtime-spec compliant container runtime."""

__version__ = "0.1.0"
OCI_VERSION = "1.2.0"

# The package's own modules by a shorter way than importlib's (see compat.py); first,
# before any other submodule is imported.
from ocirun import compat as _compat  # noqa: E402

_compat.install_module_finder()

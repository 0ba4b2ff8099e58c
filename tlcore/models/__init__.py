"""The pretrained backbones (registry, bundled and downloaded weights), a body with a new head, the runtimes
that run a frozen body fastest, and zero-shot from class names. Imports only ``core``."""
from . import families  # noqa: F401  (registers the backbones this app knows)

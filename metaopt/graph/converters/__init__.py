"""Built-in converters, one module per layer family; importing registers them."""

from . import attention, conv, dense, functional, norm  # noqa: F401

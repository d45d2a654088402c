"""Built-in converters, one module per layer family; importing registers them."""

from . import attention, conv, dense, functional, grid, group, norm, recurrent  # noqa: F401

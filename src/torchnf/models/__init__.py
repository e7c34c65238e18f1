"""Ready-made flows named after papers."""

__all__: list[str] = []

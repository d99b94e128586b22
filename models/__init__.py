"""Package data: the default adapter (``lora/``), installed as ``qabridge.models``."""

"""Programs built on the library, outside its core: the ``coremesh`` operator CLI and the demo."""

"""Pure protocol cores: no sockets, no asyncio, no threads, no clock reads."""

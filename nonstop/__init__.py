"""nonstop: a live-streaming server (RTMP, HTTP-FLV) whose operation never interrupts a viewer."""

__version__ = "0.1.0"
SERVER_NAME = f"nonstop/{__version__}"

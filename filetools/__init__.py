"""File tools: prepare, inspect and add-plt for JPEG 2000 files, and the demo image builder.

Not needed by the server or the JPIP client; what only these tools use (Pillow, tifffile) comes
with the `tools` extra.
"""

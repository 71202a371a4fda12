"""Scene-side stages of IDU: store and versions, splats and formats, cameras, rendering.

Plain Python over files and arrays; no Prefect here (``tasks/`` wraps these stages).
"""

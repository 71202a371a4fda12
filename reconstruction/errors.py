"""Typed errors. Every message is one line that names the file or object and the problem."""


class IDUError(Exception):
    """Base class of every error IDU reports to a user (the CLI prints ``error: <message>``)."""


class SceneFormatError(IDUError):
    """A scene file (PLY, COLMAP model, checkpoint, ...) is missing, malformed or holds bad values."""


class SceneStoreError(IDUError):
    """The scene store cannot do what was asked (unknown scene or version, bad layout)."""


class SceneLockedError(SceneStoreError):
    """Another writer holds the scene's lock."""


class RenderError(IDUError):
    """The renderer was given inputs it cannot use."""


class SfMError(IDUError):
    """Structure-from-motion could not reconstruct the photos (too few features, matches or registrations)."""

"""Exceptions raised by the library. The CLI turns them into messages and exit codes."""


class FaceSearchError(Exception):
    """Base class of every error facesearch raises on purpose."""


class InvalidImageError(FaceSearchError, ValueError):
    """A file that cannot be used as a face image (missing, not an image, truncated, too large).

    ``source`` names the input (a path, ``<N bytes>``, a zip member), ``reason`` says what is wrong with
    it; the message is ``"source: reason"``. Given one argument, it is the reason alone (no source)."""

    def __init__(self, source: str, reason: str | None = None):
        if reason is None:
            source, reason = "", source
        self.source, self.reason = str(source), str(reason)
        super().__init__(f"{self.source}: {self.reason}" if self.source else self.reason)


class NoFaceError(InvalidImageError):
    """A photo in which the face detector found no face."""


class InvalidIdentityError(FaceSearchError, ValueError):
    """An identity name that is empty, too long, or contains path separators or control characters."""


class UnknownIdentityError(FaceSearchError, KeyError):
    """An identity that is not enrolled."""

    def __str__(self):  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else "unknown identity"


class ModelMismatchError(FaceSearchError):
    """Embeddings of one model would be compared with those of another."""


class SchemaError(FaceSearchError):
    """The database schema is newer than this version of facesearch, or otherwise unusable."""


class ThresholdError(FaceSearchError, ValueError):
    """A decision threshold that is out of range, or a false accept rate the model has no threshold for."""


class ModelFileError(FaceSearchError, ValueError):
    """A model directory that is missing, incomplete or inconsistent."""


class TrainingError(FaceSearchError, ValueError):
    """Training cannot start or continue: bad options, too little data, an incompatible checkpoint."""


class PairsFileError(FaceSearchError, ValueError):
    """A pairs file (LFW ``pairs.txt`` format) that cannot be read."""


class DetectorUnavailable(FaceSearchError):
    """Face detection was asked for but no detector is installed (``pip install facesearch[detect]``)."""


class FaceSearchWarning(UserWarning):
    """Something the user should know that does not stop the work (the CLI prints it as a note)."""


class OutdatedModelWarning(FaceSearchWarning):
    """A gallery still embedded by a built-in model that is no longer the default."""

"""redsg-edge: an emotion-aware companion daemon for small computers."""

__version__ = "0.1.0"

#: The seven emotion classes, in FER2013's own order (Goodfellow et al., 2013). Every model,
#: probability vector and config table in this project uses this order.
CLASSES: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
NUM_CLASSES = len(CLASSES)

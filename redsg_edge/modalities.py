"""The modality table: each source of emotion evidence, declared once.

Fusion, the status file, the replay records, the timeline plot and the scenario tools iterate
over :data:`MODALITIES`; nothing else names ``"face"`` or ``"voice"`` except the producers of
their evidence. Fusion's one cross-modal rule (a talking face, see ``fusion``) is a field of the
table too: ``FACE.neutral_yields_to = "voice"``.

Adding a modality (docs/architecture.md): give it a producer that returns
``fusion.Evidence(name, t, probs, reliability)`` and either a ``[fusion] <name>_weight`` key in
``config.FusionConfig`` or a ``default_weight``, then :func:`register` it. Pure data, no I/O.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

__all__ = ["Modality", "MODALITIES", "FACE", "VOICE", "register", "registered", "prior_weight"]


@dataclass(frozen=True)
class Modality:
    """One evidence source.

    ``name`` the key in evidence, records and status (``"face"``); ``label`` for people
    (``"face (FER)"``); ``device`` the capture device that feeds it (``"camera"``,
    ``"microphone"``, or another name; the status file reports it on/off); ``weight_key`` the
    ``FusionConfig`` attribute holding its prior weight, or None to use ``default_weight``
    (0..10, the same scale); ``colour`` its line in the timeline plot (a Matplotlib colour);
    ``neutral_yields_to`` the name of another modality: while that one has fresh evidence, this
    one's weight keeps only its non-neutral share (``fusion.talking_face_factor``: a face reads
    neutral while its owner speaks), or None.
    """

    name: str
    label: str
    device: str
    weight_key: str | None = None
    default_weight: float = 1.0
    colour: str = "tab:gray"
    neutral_yields_to: str | None = None


FACE = Modality("face", "face (FER)", "camera", "face_weight", colour="tab:blue",
                neutral_yields_to="voice")
VOICE = Modality("voice", "voice (SER)", "microphone", "voice_weight", colour="tab:orange")

#: name → Modality, in plotting and record order. Mutated only by :func:`register`.
MODALITIES: dict[str, Modality] = {FACE.name: FACE, VOICE.name: VOICE}


def prior_weight(modality: Modality, fusion_cfg: Any) -> float:
    """The modality's prior weight (0..10) from ``fusion_cfg`` (a ``FusionConfig``): the
    attribute ``weight_key`` when set and present, else ``default_weight``."""
    if modality.weight_key is not None and hasattr(fusion_cfg, modality.weight_key):
        return float(getattr(fusion_cfg, modality.weight_key))
    return float(modality.default_weight)


def register(modality: Modality) -> None:
    """Add ``modality`` to the table (after the existing ones). Raises ValueError when the name
    is taken or ``default_weight`` is outside 0..10."""
    if modality.name in MODALITIES:
        raise ValueError(f"modality {modality.name!r} is already registered")
    if not 0.0 <= modality.default_weight <= 10.0:
        raise ValueError(f"modality {modality.name!r}: default_weight must be in 0..10, "
                         f"got {modality.default_weight}")
    MODALITIES[modality.name] = modality


@contextmanager
def registered(modality: Modality) -> Iterator[Modality]:
    """:func:`register` for the duration of a ``with`` block (tests, experiments)."""
    register(modality)
    try:
        yield modality
    finally:
        MODALITIES.pop(modality.name, None)

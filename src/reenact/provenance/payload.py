"""The 64-bit payload every mark carries, its error-correcting code and keyed spreading.

Payload: a 16-bit tool id (always `TOOL_ID` for reenact) and a 48-bit output id
(random per output, the first 48 bits of a uuid4). Both watermarks carry the
same payload, so a video's picture and its sound can be matched to each other and
to the C2PA manifest, which states the payload in its soft-binding assertion.

Code: a convolutional code (constraint length 7, rate 1/3, the LTE polynomials
133/171/165 octal) with a zero tail, decoded by soft-decision Viterbi: 64 bits
become 210 coded bits. Decoding always returns some payload; a mark counts as found only
when the decoded tool id is ours *and* the received soft values agree with the
re-encoded codeword (see `decode`), which random content does not do.

Spreading: chip sequences are drawn from a generator seeded by `TOOL_KEY` and a
label. The key is public (it is written here and in docs/provenance.md): anyone
can run `reenact verify` without a secret, yet content not marked by reenact
does not correlate with the keyed patterns.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass

import numpy as np

TOOL_ID = 0x5245  # "RE"
TOOL_KEY = "reenact-provenance-v1"  # public key of the spreading sequences
ALGORITHM = "org.reenact.wm.v1"  # name of the watermark in the C2PA soft-binding assertion

_K = 7
_POLYS = (0o133, 0o171, 0o165)
N_BITS = 64
N_CODED = len(_POLYS) * (N_BITS + _K - 1)  # 210


@dataclass(frozen=True)
class Payload:
    """What a mark says: which tool made the file, and which output it is."""

    tool: int
    output_id: int  # 48 bits

    @classmethod
    def new(cls, output_id: str | None = None) -> "Payload":
        """A payload for a new output; `output_id` is a uuid string (random when None)."""
        uid = uuid.UUID(output_id) if output_id else uuid.uuid4()
        return cls(TOOL_ID, uid.int >> 80)

    @classmethod
    def from_hex(cls, text: str) -> "Payload":
        value = int(text, 16)
        return cls(value >> 48, value & (2**48 - 1))

    @property
    def value(self) -> int:
        return (self.tool << 48) | self.output_id

    def hex(self) -> str:
        return f"{self.value:016x}"

    def bits(self) -> np.ndarray:
        return np.array([(self.value >> (63 - i)) & 1 for i in range(64)], np.uint8)

    @classmethod
    def from_bits(cls, bits: np.ndarray) -> "Payload":
        value = 0
        for b in np.asarray(bits[:64]).astype(int):
            value = (value << 1) | int(b)
        return cls(value >> 48, value & (2**48 - 1))

    @property
    def ours(self) -> bool:
        return self.tool == TOOL_ID


def rng(label: str) -> np.random.Generator:
    """A generator keyed by the public tool key and a label (e.g. 'video-pilot')."""
    seed = hashlib.sha256(f"{TOOL_KEY}/{label}".encode()).digest()
    return np.random.default_rng(int.from_bytes(seed[:8], "big"))


def chips(label: str, n: int) -> np.ndarray:
    """n keyed pseudo-random ±1 chips (float32)."""
    return rng(label).choice(np.array([-1.0, 1.0], np.float32), size=n)


def _parity(x: np.ndarray) -> np.ndarray:
    x = x.copy()
    for s in (4, 2, 1):
        x ^= x >> s
    return x & 1


_STATES = np.arange(1 << (_K - 1))
# Output of each (state, input bit): register = input bit followed by the state's bits.
_REG = np.stack([(b << (_K - 1)) | _STATES for b in (0, 1)], axis=1)  # (states, 2)
_OUT = np.stack([_parity(_REG & p) for p in _POLYS], axis=-1).astype(np.uint8)  # (states, 2, 3)
_NEXT = _REG >> 1  # next state for (state, input)
# Each next state n is reached with input bit n >> 5 from states (n & 31) << 1 | {0, 1}.
_PRED = np.stack([((_STATES & 31) << 1) | j for j in (0, 1)], axis=1)  # (states, 2)
_PRED_BIT = _STATES >> (_K - 2)


def encode(payload: Payload) -> np.ndarray:
    """210 coded bits (uint8) of a payload."""
    bits = np.concatenate([payload.bits(), np.zeros(_K - 1, np.uint8)])
    state, out = 0, []
    for b in bits:
        out.extend(_OUT[state, b].astype(np.uint8))
        state = _NEXT[state, b]
    return np.array(out, np.uint8)


def viterbi(soft: np.ndarray) -> np.ndarray:
    """Most likely 64 payload bits from 210 soft values (positive means bit 1)."""
    soft = np.asarray(soft, np.float64).reshape(-1, len(_POLYS))
    n = len(_STATES)
    metric = np.full(n, -np.inf)
    metric[0] = 0.0
    # Branch gain of reaching each next state from each of its two predecessors.
    signs = (2.0 * _OUT[_PRED, _PRED_BIT[:, None]] - 1.0)  # (states, 2, rate)
    back = np.zeros((len(soft), n), np.int64)
    for t, values in enumerate(soft):
        gain = metric[_PRED] + signs @ values  # (states, 2)
        choice = np.argmax(gain, axis=1)
        back[t] = _PRED[_STATES, choice]
        metric = gain[_STATES, choice]
    state, bits = 0, []
    for t in range(len(soft) - 1, -1, -1):
        bits.append(state >> (_K - 2))
        state = back[t, state]
    return np.array(bits[::-1][:N_BITS], np.uint8)


def decode(soft: np.ndarray) -> tuple[Payload, float]:
    """Decode soft values; returns the payload and the agreement in [-1, 1].

    Agreement is the soft values' correlation with the re-encoded codeword,
    sum(soft * sign) / sum(|soft|): near 1 for a clean mark, about 0.2-0.35
    for content without a mark (Viterbi always finds some nearby codeword).
    """
    soft = np.asarray(soft, np.float64)
    payload = Payload.from_bits(viterbi(soft))
    signs = 2.0 * encode(payload) - 1.0
    total = np.abs(soft).sum()
    agreement = float((soft * signs).sum() / total) if total > 0 else 0.0
    return payload, agreement
